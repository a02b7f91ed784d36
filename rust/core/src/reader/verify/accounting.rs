//! The sequence accounting of `verify` (docs/FORMAT.md): every seq present once, inside a
//! GAP, or inside a crashed session's possible-loss range; and the clock's periods from the
//! CLOCK records.
use super::*;

/// Holes and duplicates of the seqs, GAP coverage subtracted from the holes.
pub(super) fn account(r: &mut Report, mut seqs: Vec<u64>, gaps: &[(u64, u64, u64)]) {
    if seqs.is_empty() {
        return;
    }
    // stable sort: the log is a few long ascending runs, which it merges in about O(n)
    seqs.sort();
    r.first_seq = seqs.first().copied();
    r.last_seq = seqs.last().copied();
    let mut missing: Vec<(u64, u64)> = Vec::new();
    for w in seqs.windows(2) {
        let (p, s) = (w[0], w[1]);
        if s == p {
            if r.duplicates.len() < 20 && r.duplicates.last() != Some(&s) {
                r.duplicates.push(s);
            }
        } else if s > p + 1 {
            missing.push((p + 1, s - 1));
        }
    }
    for &(a, b, c) in gaps {
        if c < a || b == 0 || b > c - a + 1 {
            r.accounting_errors.push(format!(
                "malformed GAP record: first {a}, count {b}, last {c}"
            ));
        }
    }
    let mut ranges: Vec<(u64, u64)> = gaps
        .iter()
        .filter(|g| g.2 >= g.0)
        .map(|g| (g.0, g.2))
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (a, c) in ranges {
        match merged.last_mut() {
            Some(m) if a <= m.1.saturating_add(1) => m.1 = m.1.max(c),
            _ => merged.push((a, c)),
        }
    }
    let (mut covered, mut j) = (0u64, 0usize);
    for (lo, hi) in missing {
        let mut cur = lo;
        while j < merged.len() && merged[j].1 < cur {
            j += 1;
        }
        let mut k = j;
        while cur <= hi {
            if k < merged.len() && merged[k].0 <= cur {
                let end = hi.min(merged[k].1);
                covered += end - cur + 1;
                if end == u64::MAX {
                    break;
                }
                cur = end + 1;
                if merged[k].1 <= hi {
                    k += 1;
                }
            } else {
                let next = if k < merged.len() {
                    merged[k].0
                } else {
                    hi + 1
                };
                let end = hi.min(next - 1);
                r.unaccounted_missing.push((cur, end));
                cur = end + 1;
            }
        }
    }
    r.gaps_accounted = covered;
    let declared: u64 = gaps.iter().map(|g| g.1).sum();
    if declared != covered {
        r.accounting_errors.push(format!(
            "GAP records declare {declared} lost seq(s) but {covered} seq(s) inside their ranges \
             are missing"
        ));
    }
}

/// Moves the holes inside a crashed session's `[last seq + 1, seq_reserved)` out of the
/// unaccounted list into `possible_loss`: the dead writer may have handed those seqs out
/// (records lost in its rings) or never used them; the log cannot tell which.
pub(super) fn crash_losses(r: &mut Report) {
    let n = r.sessions.len();
    // the last session without an end may still be running: its mark is ahead by design
    let ranges: Vec<(Option<u64>, u64, u64)> = r
        .sessions
        .iter()
        .enumerate()
        .filter(|(i, s)| !s.ended && i + 1 < n)
        .filter_map(|(_, s)| {
            let last = s.last_seq?;
            (s.seq_reserved > last + 1).then_some((s.pid, last + 1, s.seq_reserved))
        })
        .collect();
    if ranges.is_empty() {
        return;
    }
    let mut kept = Vec::new();
    for &(lo, hi) in &r.unaccounted_missing {
        let mut pieces = vec![(lo, hi)];
        for &(pid, from, to) in &ranges {
            let mut next = Vec::new();
            for (a, b) in pieces {
                let (ca, cb) = (a.max(from), b.min(to - 1));
                if ca > cb {
                    next.push((a, b));
                    continue;
                }
                r.possible_loss.push(PossibleLoss {
                    pid,
                    from: ca,
                    to: cb + 1,
                });
                if a < ca {
                    next.push((a, ca - 1));
                }
                if cb < b {
                    next.push((cb + 1, b));
                }
            }
            pieces = next;
        }
        kept.extend(pieces);
    }
    r.unaccounted_missing = kept;
}

pub(super) fn clock_periods(mut clock: Vec<(u64, u16, u64)>) -> Vec<ClockPeriod> {
    clock.sort_unstable();
    let mut out: Vec<ClockPeriod> = Vec::new();
    for (wall, code, maxerr) in clock {
        match out.last_mut() {
            Some(p) if p.code == code => {
                p.to_wall_ns = wall;
                p.records += 1;
                p.max_error_us = p.max_error_us.max(maxerr);
            }
            _ => out.push(ClockPeriod {
                code,
                from_wall_ns: wall,
                to_wall_ns: wall,
                records: 1,
                max_error_us: maxerr,
            }),
        }
    }
    out
}
