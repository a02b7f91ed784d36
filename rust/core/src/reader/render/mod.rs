//! `dump`: records rendered for people (seq order, TEXT records joined onto the record they
//! are attached to, fields named by kind) or for machines (one JSON object per line), and the
//! raw record-per-row view. Rendering lives here, next to the reader, so the CLI streams
//! millions of records without a Python object per record.
use crate::record::{kind, Record, FLAG_EMERGENCY, FLAG_SYSTEM, RECORD_SIZE};
use std::collections::HashMap;
use std::fmt::Write;

mod names;
mod text;

pub use names::kind_name;
use names::*;
use text::*;
pub use text::{iso_utc, text_chunk};

/// Output shape of [`Dump`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Seq order, texts joined, fields named.
    Text,
    /// Same records, one JSON object per line.
    Json,
    /// Every record (TEXT chunks too) in file order, one row each, generic columns.
    Raw,
    /// [`Style::Raw`] as JSON lines.
    RawJson,
}

/// One record to render, with what the reader knows about it.
#[derive(Debug, Clone)]
struct Item {
    rec: Record,
    salvaged: bool,
    texts: Vec<String>,
}

/// A log prepared for rendering: the records in the chosen order, texts joined.
pub struct Dump {
    items: Vec<Item>,
    scopes: HashMap<u64, String>,
    style: Style,
    next: usize,
    iso: IsoCache,
}

const SCOPE_PREFIX: &str = "scope:";

impl Dump {
    /// Prepares `data` (whole records; `salvaged[i]` flags record i) for `style`, keeping
    /// only `kinds` (None: all; TEXT records are still joined onto their records).
    pub fn new(data: &[u8], salvaged: &[bool], style: Style, kinds: Option<&[u8]>) -> Dump {
        let recs = data
            .chunks_exact(RECORD_SIZE)
            .map(|b| Record::from_bytes(b.try_into().expect("64 bytes")));
        let keep = |k: u8| kinds.is_none_or(|ks| ks.contains(&k));
        let raw = matches!(style, Style::Raw | Style::RawJson);
        let mut items: Vec<Item> = recs
            .enumerate()
            .map(|(i, rec)| Item {
                rec,
                salvaged: salvaged.get(i).copied().unwrap_or(false),
                texts: Vec::new(),
            })
            .collect();
        let mut scopes = HashMap::new();
        if !raw {
            items.sort_by_key(|it| it.rec.seq);
            // TEXT chunks, in seq order, joined per attached seq; chunk 0 starts a new text
            let mut texts: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
            for it in items.iter().filter(|it| it.rec.kind == kind::TEXT) {
                let list = texts.entry(it.rec.c).or_default();
                if it.rec.code == 0 || list.is_empty() {
                    list.push(Vec::new());
                }
                list.last_mut().expect("pushed").extend(text_chunk(&it.rec));
            }
            for it in items.iter_mut() {
                if it.rec.kind == kind::TEXT {
                    continue;
                }
                if let Some(list) = texts.remove(&it.rec.seq) {
                    it.texts = list
                        .into_iter()
                        .map(|t| String::from_utf8_lossy(&t).into_owned())
                        .collect();
                    if matches!(
                        it.rec.kind,
                        kind::KILL_SWITCH | kind::STATE_CHANGE | kind::RESET | kind::ORDER_DENIED
                    ) {
                        if let Some(s) = it.texts.iter().find(|t| t.starts_with(SCOPE_PREFIX)) {
                            scopes.insert(it.rec.c, s[SCOPE_PREFIX.len()..].to_string());
                        }
                    }
                }
            }
            // texts whose record is not in the log stay visible as TEXT rows
            items.retain_mut(|it| {
                if it.rec.kind != kind::TEXT {
                    return true;
                }
                if !texts.contains_key(&it.rec.c) {
                    return false;
                }
                if it.rec.code == 0 || it.texts.is_empty() {
                    it.texts = vec![String::from_utf8_lossy(&text_chunk(&it.rec)).into_owned()];
                }
                true
            });
        }
        items.retain(|it| keep(it.rec.kind));
        Dump {
            items,
            scopes,
            style,
            next: 0,
            iso: IsoCache::default(),
        }
    }

    /// Records left to render.
    pub fn remaining(&self) -> usize {
        self.items.len() - self.next
    }

    /// The column header of the text styles (None for JSON).
    pub fn header(&self) -> Option<&'static str> {
        match self.style {
            Style::Text => Some(
                "       seq time (UTC)                     kind            fields",
            ),
            Style::Raw => Some(
                "       seq time (UTC)                     kind            fl  code   symbol                    a                    b                    c   thread",
            ),
            _ => None,
        }
    }

    /// Renders up to `n` more records (one line each).
    pub fn render(&mut self, n: usize) -> String {
        let end = (self.next + n).min(self.items.len());
        let mut out = String::with_capacity((end - self.next) * 128);
        for i in self.next..end {
            match self.style {
                Style::Text => self.line_text(&mut out, i),
                Style::Json => self.line_json(&mut out, i, false),
                Style::Raw => line_raw(&mut out, &self.items[i], &mut self.iso),
                Style::RawJson => self.line_json(&mut out, i, true),
            }
            out.push('\n');
        }
        self.next = end;
        out
    }

    fn write_scope(&self, out: &mut String, id: u64, json: bool) {
        match (id, self.scopes.get(&id)) {
            (0, _) => quoted(out, "firm", json),
            (_, Some(text)) => quoted(out, text, json),
            (_, None) if json => {
                let _ = write!(out, "\"{id:#018x}\"");
            }
            (_, None) => {
                let _ = write!(out, "{id:#018x}");
            }
        }
    }

    fn write_val(&self, out: &mut String, v: Val, json: bool) {
        match v {
            Val::I(x) => push_i64(out, x),
            Val::U(x) => push_u64(out, x),
            Val::S(x) => quoted(out, x, json),
            Val::Scope(id) => self.write_scope(out, id, json),
            Val::Step(code) => quoted(out, &step_name(code), json),
        }
    }

    fn line_text(&mut self, out: &mut String, i: usize) {
        let it = &self.items[i];
        let r = &it.rec;
        push_u64_right(out, r.seq, 10);
        out.push(' ');
        self.iso.write(out, r.wall_ns);
        out.push(' ');
        match kind_name(r.kind) {
            Some(k) => push_left(out, k, 15),
            None => push_left(out, &r.kind.to_string(), 15),
        }
        let f = fields(r);
        for (k, v) in &f.items[..f.len] {
            out.push(' ');
            out.push_str(k);
            out.push('=');
            self.write_val(out, *v, false);
        }
        if r.kind == kind::ORDER_DENIED {
            out.push_str(" (denials since the previous ORDER_DENIED record)");
        }
        for t in &it.texts {
            let _ = write!(out, " text={t:?}");
        }
        if r.flags & FLAG_EMERGENCY != 0 {
            out.push_str(" [emergency]");
        }
        if r.flags & FLAG_SYSTEM != 0 {
            out.push_str(" [system]");
        }
        if it.salvaged {
            out.push_str(" [SALVAGED: after damage]");
        }
    }

    fn line_json(&mut self, out: &mut String, i: usize, raw: bool) {
        let it = &self.items[i];
        let r = &it.rec;
        out.push_str("{\"seq\":");
        push_u64(out, r.seq);
        out.push_str(",\"time\":\"");
        self.iso.write(out, r.wall_ns);
        out.push_str("\",\"kind\":");
        match kind_name(r.kind) {
            Some(k) => json_str(out, k),
            None => {
                let _ = write!(out, "{}", r.kind);
            }
        }
        for (k, v) in [
            ("wall_ns", r.wall_ns),
            ("mono_ns", r.mono_ns),
            ("flags", r.flags.into()),
            ("code", r.code.into()),
            ("thread_id", r.thread_id.into()),
        ] {
            out.push_str(",\"");
            out.push_str(k);
            out.push_str("\":");
            push_u64(out, v);
        }
        for (k, v) in [("a", r.a), ("b", r.b)] {
            out.push_str(",\"");
            out.push_str(k);
            out.push_str("\":");
            push_i64(out, v);
        }
        for (k, v) in [
            ("c", r.c),
            ("symbol_id", r.symbol_id.into()),
            ("crc32c", r.crc32c.into()),
        ] {
            out.push_str(",\"");
            out.push_str(k);
            out.push_str("\":");
            push_u64(out, v);
        }
        out.push_str(if r.flags & FLAG_SYSTEM != 0 {
            ",\"system\":true"
        } else {
            ",\"system\":false"
        });
        out.push_str(if r.flags & FLAG_EMERGENCY != 0 {
            ",\"emergency\":true"
        } else {
            ",\"emergency\":false"
        });
        if raw {
            if r.kind == kind::TEXT {
                out.push_str(",\"text\":");
                json_str(out, &String::from_utf8_lossy(&text_chunk(r)));
            }
        } else {
            out.push_str(",\"fields\":{");
            let f = fields(r);
            for (j, (k, v)) in f.items[..f.len].iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                let _ = write!(out, "\"{k}\":");
                self.write_val(out, *v, true);
            }
            out.push_str("},\"texts\":[");
            for (j, t) in it.texts.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                json_str(out, t);
            }
            out.push(']');
        }
        if it.salvaged {
            out.push_str(",\"salvaged\":true");
        }
        out.push('}');
    }
}

fn line_raw(out: &mut String, it: &Item, iso: &mut IsoCache) {
    let r = &it.rec;
    let kind = kind_name(r.kind).map_or_else(|| r.kind.to_string(), str::to_string);
    let fl = format!(
        "{}{}",
        if r.flags & FLAG_SYSTEM != 0 { "S" } else { "" },
        if r.flags & FLAG_EMERGENCY != 0 {
            "E"
        } else {
            ""
        }
    );
    let _ = write!(out, "{:>10} ", r.seq);
    iso.write(out, r.wall_ns);
    let _ = write!(
        out,
        " {:<15} {:>2} {:>5} {:>8} {:>20} {:>20} {:>20} {:>8}",
        kind, fl, r.code, r.symbol_id, r.a, r.b, r.c, r.thread_id
    );
    if r.kind == kind::TEXT {
        let _ = write!(out, "  {:?}", String::from_utf8_lossy(&text_chunk(r)));
    }
    if it.salvaged {
        out.push_str(" [SALVAGED]");
    }
}
