//! `dump`: records rendered for people (seq order, TEXT records joined onto the record they
//! are attached to, fields named by kind) or for machines (one JSON object per line), and the
//! raw record-per-row view. Rendering lives here, next to the reader, so the CLI streams
//! millions of records without a Python object per record.
use crate::record::{kind, Record, FLAG_EMERGENCY, FLAG_SYSTEM, RECORD_SIZE};
use std::collections::HashMap;
use std::fmt::Write;

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

/// The name of a record kind, when known.
pub fn kind_name(k: u8) -> Option<&'static str> {
    Some(match k {
        kind::KILL_SWITCH => "KILL_SWITCH",
        kind::TRADE => "TRADE",
        kind::ORDER_SENT => "ORDER_SENT",
        kind::ORDER_CANCELLED => "ORDER_CANCELLED",
        kind::RISK_CHECK => "RISK_CHECK",
        kind::STATE_CHANGE => "STATE_CHANGE",
        kind::RESET => "RESET",
        kind::HANDLER_FAILURE => "HANDLER_FAILURE",
        kind::TEXT => "TEXT",
        kind::ORDER_DENIED => "ORDER_DENIED",
        kind::STOP_STEP => "STOP_STEP",
        kind::USER => "USER",
        kind::GAP => "GAP",
        kind::CLOCK => "CLOCK",
        kind::SESSION_START => "SESSION_START",
        kind::SESSION_END => "SESSION_END",
        _ => return None,
    })
}

fn reason_name(code: u64) -> Option<&'static str> {
    Some(match code {
        1 => "DAILY_LOSS_LIMIT",
        2 => "POSITION_LIMIT",
        3 => "DRAWDOWN",
        4 => "MANUAL",
        5 => "MESSAGE_RATE",
        6 => "REPEATED_EXECUTIONS",
        7 => "TRIGGER_FAILURE",
        8 => "PRICE_COLLAR",
        9 => "CONNECTIVITY",
        10 => "RISK_SYSTEM",
        255 => "OTHER",
        _ => return None,
    })
}

fn state_name(v: i64) -> Option<&'static str> {
    Some(match v {
        0 => "ACTIVE",
        1 => "REDUCING",
        2 => "HALTED",
        _ => return None,
    })
}

fn named(name: Option<&'static str>, v: impl std::fmt::Display) -> String {
    name.map_or_else(|| v.to_string(), str::to_string)
}

fn step_name(code: u16) -> String {
    match code {
        1 => "gate_blocked".into(),
        3 => "handlers_done".into(),
        4 => "durable".into(),
        5 => "durability_timeout".into(),
        c if c >= 1000 => format!("handler_{}_returned", c - 1000),
        c => c.to_string(),
    }
}

/// The text of a TEXT record's chunk (`a`, `b`, `symbol_id`, NUL padding removed).
pub fn text_chunk(r: &Record) -> Vec<u8> {
    let mut raw = Vec::with_capacity(20);
    raw.extend_from_slice(&r.a.to_le_bytes());
    raw.extend_from_slice(&r.b.to_le_bytes());
    raw.extend_from_slice(&r.symbol_id.to_le_bytes());
    while raw.last() == Some(&0) {
        raw.pop();
    }
    raw
}

/// UTC `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` of ns since the epoch (proleptic Gregorian).
pub fn iso_utc(wall_ns: u64) -> String {
    let secs = wall_ns / 1_000_000_000;
    let ns = wall_ns % 1_000_000_000;
    let (days, sod) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ns:09}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
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
            let it = &self.items[i];
            match self.style {
                Style::Text => self.line_text(&mut out, it),
                Style::Json => self.line_json(&mut out, it, false),
                Style::Raw => line_raw(&mut out, it),
                Style::RawJson => self.line_json(&mut out, it, true),
            }
            out.push('\n');
        }
        self.next = end;
        out
    }

    fn scope(&self, id: u64) -> String {
        if id == 0 {
            return "firm".into();
        }
        match self.scopes.get(&id) {
            Some(s) => s.clone(),
            None => format!("{id:#018x}"),
        }
    }

    /// (name, value, is_number) of the kind's fields.
    fn fields(&self, r: &Record) -> Vec<(&'static str, String, bool)> {
        let n = |v: i128| (v.to_string(), true);
        let s = |v: String| (v, false);
        let list: Vec<(&'static str, (String, bool))> = match r.kind {
            kind::KILL_SWITCH => vec![
                ("reason", s(named(reason_name(r.code.into()), r.code))),
                ("symbol", n(r.symbol_id.into())),
                ("position", n(r.a.into())),
                ("pnl_cents", n(r.b.into())),
                ("scope", s(self.scope(r.c))),
            ],
            kind::TRADE | kind::ORDER_SENT | kind::ORDER_CANCELLED => vec![
                ("symbol", n(r.symbol_id.into())),
                ("quantity", n(r.a.into())),
                ("price_cents", n(r.b.into())),
                ("order_id", n(r.c.into())),
            ],
            kind::RISK_CHECK => vec![
                ("check", n(r.code.into())),
                ("observed", n(r.a.into())),
                ("limit", n(r.b.into())),
                ("outcome", n(r.c.into())),
                ("symbol", n(r.symbol_id.into())),
            ],
            kind::STATE_CHANGE => vec![
                ("state", s(named(state_name(r.code.into()), r.code))),
                ("old", s(named(state_name(r.a), r.a))),
                ("reason", s(named(reason_name(r.b as u64), r.b))),
                ("scope", s(self.scope(r.c))),
            ],
            kind::RESET => vec![
                (
                    "outcome",
                    s(match r.code {
                        0 => "accepted".into(),
                        1 => "refused".into(),
                        c => c.to_string(),
                    }),
                ),
                ("old", s(named(state_name(r.a), r.a))),
                ("new", s(named(state_name(r.b), r.b))),
                ("scope", s(self.scope(r.c))),
            ],
            kind::HANDLER_FAILURE => vec![
                ("handler", n(r.code.into())),
                ("elapsed_ns", n(r.a.into())),
                ("kill_seq", n(r.c.into())),
            ],
            kind::TEXT => vec![("attached_to", n(r.c.into())), ("chunk", n(r.code.into()))],
            kind::ORDER_DENIED => vec![
                ("denials", n(r.a.into())),
                ("symbol", n(r.symbol_id.into())),
                ("scope", s(self.scope(r.c))),
            ],
            kind::STOP_STEP => vec![
                ("step", s(step_name(r.code))),
                ("since_trigger_ns", n(r.a.into())),
                ("step_ns", n(r.b.into())),
                ("kill_seq", n(r.c.into())),
            ],
            kind::GAP => vec![
                (
                    "ring",
                    s(match r.code {
                        0 => "main".into(),
                        1 => "emergency".into(),
                        c => c.to_string(),
                    }),
                ),
                ("first_lost", n(r.a.into())),
                ("lost", n(r.b.into())),
                ("last_lost", n(r.c.into())),
            ],
            kind::CLOCK => vec![
                (
                    "sync",
                    s(match r.code {
                        0 => "synchronised".into(),
                        1 => "unsynchronised".into(),
                        2 => "unknown".into(),
                        c => c.to_string(),
                    }),
                ),
                ("est_error_us", n(r.a.into())),
                ("max_error_us", n(r.b.into())),
                ("status", n(r.c.into())),
            ],
            kind::SESSION_START => vec![
                ("pid", n(r.a.into())),
                ("first_seq", n(r.b.into())),
                ("version", n(r.c.into())),
            ],
            kind::SESSION_END => vec![
                ("written", n(r.a.into())),
                ("dropped_main", n(r.b.into())),
                ("dropped_emergency", n(r.c.into())),
            ],
            _ => vec![
                ("code", n(r.code.into())),
                ("symbol", n(r.symbol_id.into())),
                ("a", n(r.a.into())),
                ("b", n(r.b.into())),
                ("c", n(r.c.into())),
            ],
        };
        list.into_iter().map(|(k, (v, num))| (k, v, num)).collect()
    }

    fn line_text(&self, out: &mut String, it: &Item) {
        let r = &it.rec;
        let kind = kind_name(r.kind).map_or_else(|| r.kind.to_string(), str::to_string);
        let _ = write!(out, "{:>10} {} {:<15}", r.seq, iso_utc(r.wall_ns), kind);
        for (k, v, num) in self.fields(r) {
            if num || !v.contains([' ', '"']) {
                let _ = write!(out, " {k}={v}");
            } else {
                let _ = write!(out, " {k}={v:?}");
            }
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

    fn line_json(&self, out: &mut String, it: &Item, raw: bool) {
        let r = &it.rec;
        out.push('{');
        let _ = write!(out, "\"seq\":{},\"time\":", r.seq);
        json_str(out, &iso_utc(r.wall_ns));
        out.push_str(",\"kind\":");
        match kind_name(r.kind) {
            Some(k) => json_str(out, k),
            None => {
                let _ = write!(out, "{}", r.kind);
            }
        }
        let _ = write!(
            out,
            ",\"wall_ns\":{},\"mono_ns\":{},\"flags\":{},\"code\":{},\"thread_id\":{},\"a\":{},\"b\":{},\"c\":{},\"symbol_id\":{},\"crc32c\":{},\"system\":{},\"emergency\":{}",
            r.wall_ns,
            r.mono_ns,
            r.flags,
            r.code,
            r.thread_id,
            r.a,
            r.b,
            r.c,
            r.symbol_id,
            r.crc32c,
            r.flags & FLAG_SYSTEM != 0,
            r.flags & FLAG_EMERGENCY != 0
        );
        if raw {
            if r.kind == kind::TEXT {
                out.push_str(",\"text\":");
                json_str(out, &String::from_utf8_lossy(&text_chunk(r)));
            }
        } else {
            out.push_str(",\"fields\":{");
            for (i, (k, v, num)) in self.fields(r).into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "\"{k}\":");
                if num {
                    out.push_str(&v);
                } else {
                    json_str(out, &v);
                }
            }
            out.push_str("},\"texts\":[");
            for (i, t) in it.texts.iter().enumerate() {
                if i > 0 {
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

fn line_raw(out: &mut String, it: &Item) {
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
    let _ = write!(
        out,
        "{:>10} {} {:<15} {:>2} {:>5} {:>8} {:>20} {:>20} {:>20} {:>8}",
        r.seq,
        iso_utc(r.wall_ns),
        kind,
        fl,
        r.code,
        r.symbol_id,
        r.a,
        r.b,
        r.c,
        r.thread_id
    );
    if r.kind == kind::TEXT {
        let _ = write!(out, "  {:?}", String::from_utf8_lossy(&text_chunk(r)));
    }
    if it.salvaged {
        out.push_str(" [SALVAGED]");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates() {
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            iso_utc(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(
            iso_utc(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
    }
}
