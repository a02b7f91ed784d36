//! Text primitives of the dump, none allocating per field: TEXT chunks, ISO-8601 UTC times
//! (the date part cached per second), integers, padded columns, quoted and JSON strings.
use super::*;

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
pub(super) struct IsoCache {
    second: Option<u64>,
    text: String,
}

impl IsoCache {
    pub(super) fn write(&mut self, out: &mut String, wall_ns: u64) {
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

pub(super) fn iso_seconds(secs: u64) -> String {
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
pub(super) fn push_u64(out: &mut String, mut v: u64) {
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

pub(super) fn push_i64(out: &mut String, v: i64) {
    if v < 0 {
        out.push('-');
    }
    push_u64(out, v.unsigned_abs());
}

/// `v` right-aligned in `width` columns.
pub(super) fn push_u64_right(out: &mut String, v: u64, width: usize) {
    let digits = if v == 0 { 1 } else { v.ilog10() as usize + 1 };
    for _ in digits..width {
        out.push(' ');
    }
    push_u64(out, v);
}

/// `s` left-aligned in `width` columns.
pub(super) fn push_left(out: &mut String, s: &str, width: usize) {
    out.push_str(s);
    for _ in s.len()..width {
        out.push(' ');
    }
}

pub(super) fn json_str(out: &mut String, s: &str) {
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

/// A string value: as is in text unless it has a space or a quote (then Rust-quoted), JSON
/// string in JSON.
pub(super) fn quoted(out: &mut String, s: &str, json: bool) {
    if json {
        json_str(out, s);
    } else if s.contains([' ', '"']) {
        let _ = write!(out, "{s:?}");
    } else {
        out.push_str(s);
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
