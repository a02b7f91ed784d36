//! The fixed-width fields of the table: strings NUL-padded into words, and entries and
//! commands read back from the mapping (offsets in the module above).
use super::map::Map;
use super::*;

pub(super) fn opt_bytes(s: &Option<String>) -> &[u8] {
    s.as_deref().map(str::as_bytes).unwrap_or(b"")
}

pub(super) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

pub(super) fn check_str(
    what: &'static str,
    s: Option<&str>,
    len: usize,
) -> Result<(), ControlError> {
    match s {
        Some(v) if v.len() > len || v.as_bytes().contains(&0) => {
            Err(ControlError::TooLong(what, len))
        }
        _ => Ok(()),
    }
}

/// An order field, NUL-padded into `N` words; None (or too long to be in the table) gives a
/// value no entry can hold (word 0 all ones is not valid UTF-8 padding).
#[inline(always)]
pub(super) fn pad<const N: usize>(s: Option<&str>) -> [u64; N] {
    let mut out = [u64::MAX; N];
    if let Some(v) = s {
        let b = v.as_bytes();
        if b.len() <= N * 8 && !b.contains(&0) {
            let mut buf = [0u8; 40];
            buf[..b.len()].copy_from_slice(b);
            for (k, w) in out.iter_mut().enumerate() {
                let mut x = [0u8; 8];
                x.copy_from_slice(&buf[k * 8..k * 8 + 8]);
                *w = u64::from_le_bytes(x);
            }
        }
    }
    out
}

#[inline(always)]
pub(super) fn field_eq<const N: usize>(m: &Map, off: usize, want: &[u64; N]) -> bool {
    want.iter()
        .enumerate()
        .all(|(k, w)| m.load(off + k * 8) == *w)
}

fn read_str(m: &Map, off: usize, len: usize) -> String {
    let mut buf = vec![0u8; len];
    m.load_bytes(off, &mut buf);
    let end = buf.iter().position(|&b| b == 0).unwrap_or(len);
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

pub(super) fn read_entry(m: &Map, base: usize) -> Entry {
    let w0 = m.load(base);
    let mask = (w0 >> 8) & 0xff;
    let get =
        |bit: u64, off: usize, len: usize| (mask & bit != 0).then(|| read_str(m, base + off, len));
    Entry {
        state: (w0 & 0xff) as u8,
        account: get(1, E_ACCOUNT, ACCOUNT_LEN),
        strategy: get(2, E_STRATEGY, STRATEGY_LEN),
        symbol_id: (mask & 4 != 0).then_some((w0 >> 32) as u32),
        venue: get(8, E_VENUE, VENUE_LEN),
        scope_id: m.load(base + 8),
        command_id: m.load(base + 16),
        seq: m.load(base + 24),
    }
}

pub(super) fn read_command(m: &Map, base: usize) -> Command {
    let s = |(off, len): (usize, usize)| read_str(m, base + off, len);
    Command {
        id: m.load(base),
        kind: m.load(base + 8) as u8,
        written_ns: m.load(base + 16),
        seq: m.load(base + 24),
        scope: s(C_SCOPE),
        operator: s(C_OPERATOR),
        second_operator: s(C_SECOND),
        host: s(C_HOST),
        reason: s(C_REASON),
    }
}
