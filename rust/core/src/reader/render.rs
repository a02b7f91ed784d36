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
    let mut out = String::new();
    IsoCache::default().write(&mut out, wall_ns);
    out
}

/// The date and time of the last second formatted (records come many per second).
#[derive(Default)]
struct IsoCache {
    second: Option<u64>,
    text: String,
}

impl IsoCache {
    fn write(&mut self, out: &mut String, wall_ns: u64) {
        let secs = wall_ns / 1_000_000_000;
        if self.second != Some(secs) {
            self.second = Some(secs);
            self.text = iso_seconds(secs);
        }
        out.push_str(&self.text);
        out.push('.');
        let ns = wall_ns % 1_000_000_000;
        let digits = if ns == 0 { 1 } else { ns.ilog10() as usize + 1 };
        for _ in digits..9 {
            out.push('0');
        }
        push_u64(out, ns);
        out.push('Z');
    }
}

fn iso_seconds(secs: u64) -> String {
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
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Appends the decimal digits of `v` (the fmt machinery costs more than the digits: dump
/// prints a dozen numbers per record).
fn push_u64(out: &mut String, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&buf[i..]).expect("ASCII digits"));
}

fn push_i64(out: &mut String, v: i64) {
    if v < 0 {
        out.push('-');
    }
    push_u64(out, v.unsigned_abs());
}

/// `v` right-aligned in `width` columns.
fn push_u64_right(out: &mut String, v: u64, width: usize) {
    let digits = if v == 0 { 1 } else { v.ilog10() as usize + 1 };
    for _ in digits..width {
        out.push(' ');
    }
    push_u64(out, v);
}

/// `s` left-aligned in `width` columns.
fn push_left(out: &mut String, s: &str, width: usize) {
    out.push_str(s);
    for _ in s.len()..width {
        out.push(' ');
    }
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

/// A field value, written without allocating.
#[derive(Clone, Copy)]
enum Val {
    I(i64),
    U(u64),
    S(&'static str),
    Scope(u64),
    Step(u16),
}

/// Up to five named fields of a record.
struct Fields {
    items: [(&'static str, Val); 5],
    len: usize,
}

impl Fields {
    fn of(list: &[(&'static str, Val)]) -> Fields {
        let mut items = [("", Val::I(0)); 5];
        items[..list.len()].copy_from_slice(list);
        Fields {
            items,
            len: list.len(),
        }
    }
}

fn name_or(name: Option<&'static str>, v: i64) -> Val {
    name.map_or(Val::I(v), Val::S)
}

/// The kind's fields, named (docs/FORMAT.md "Kinds").
fn fields(r: &Record) -> Fields {
    use Val::{Scope, I, S, U};
    let code = i64::from(r.code);
    let sym = ("symbol", U(r.symbol_id.into()));
    match r.kind {
        kind::KILL_SWITCH => Fields::of(&[
            ("reason", name_or(reason_name(r.code.into()), code)),
            sym,
            ("position", I(r.a)),
            ("pnl_cents", I(r.b)),
            ("scope", Scope(r.c)),
        ]),
        kind::TRADE | kind::ORDER_SENT | kind::ORDER_CANCELLED => Fields::of(&[
            sym,
            ("quantity", I(r.a)),
            ("price_cents", I(r.b)),
            ("order_id", U(r.c)),
        ]),
        kind::RISK_CHECK => Fields::of(&[
            ("check", I(code)),
            ("observed", I(r.a)),
            ("limit", I(r.b)),
            ("outcome", U(r.c)),
            sym,
        ]),
        kind::STATE_CHANGE => Fields::of(&[
            ("state", name_or(state_name(code), code)),
            ("old", name_or(state_name(r.a), r.a)),
            ("reason", name_or(reason_name(r.b as u64), r.b)),
            ("scope", Scope(r.c)),
        ]),
        kind::RESET => Fields::of(&[
            (
                "outcome",
                match r.code {
                    0 => S("accepted"),
                    1 => S("refused"),
                    _ => I(code),
                },
            ),
            ("old", name_or(state_name(r.a), r.a)),
            ("new", name_or(state_name(r.b), r.b)),
            ("scope", Scope(r.c)),
        ]),
        kind::HANDLER_FAILURE => Fields::of(&[
            ("handler", I(code)),
            ("elapsed_ns", I(r.a)),
            ("kill_seq", U(r.c)),
        ]),
        kind::TEXT => Fields::of(&[("attached_to", U(r.c)), ("chunk", I(code))]),
        kind::ORDER_DENIED => Fields::of(&[("denials", I(r.a)), sym, ("scope", Scope(r.c))]),
        kind::STOP_STEP => Fields::of(&[
            ("step", Val::Step(r.code)),
            ("since_trigger_ns", I(r.a)),
            ("step_ns", I(r.b)),
            ("kill_seq", U(r.c)),
        ]),
        kind::GAP => Fields::of(&[
            (
                "ring",
                match r.code {
                    0 => S("main"),
                    1 => S("emergency"),
                    _ => I(code),
                },
            ),
            ("first_lost", I(r.a)),
            ("lost", I(r.b)),
            ("last_lost", U(r.c)),
        ]),
        kind::CLOCK => Fields::of(&[
            (
                "sync",
                match r.code {
                    0 => S("synchronised"),
                    1 => S("unsynchronised"),
                    2 => S("unknown"),
                    _ => I(code),
                },
            ),
            ("est_error_us", I(r.a)),
            ("max_error_us", I(r.b)),
            ("status", U(r.c)),
        ]),
        kind::SESSION_START => {
            Fields::of(&[("pid", I(r.a)), ("first_seq", I(r.b)), ("version", U(r.c))])
        }
        kind::SESSION_END => Fields::of(&[
            ("written", I(r.a)),
            ("dropped_main", I(r.b)),
            ("dropped_emergency", U(r.c)),
        ]),
        _ => Fields::of(&[
            ("code", I(code)),
            sym,
            ("a", I(r.a)),
            ("b", I(r.b)),
            ("c", U(r.c)),
        ]),
    }
}

/// A string value: as is in text unless it has a space or a quote (then Rust-quoted), JSON
/// string in JSON.
fn quoted(out: &mut String, s: &str, json: bool) {
    if json {
        json_str(out, s);
    } else if s.contains([' ', '"']) {
        let _ = write!(out, "{s:?}");
    } else {
        out.push_str(s);
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
