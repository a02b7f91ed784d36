//! `verify`: everything a log can say about itself. Per segment the reading rules (via
//! [`scan_segment`]), the slack after `committed` of a closed segment and past `capacity`,
//! the hash chain (keyed or not, and keyed everywhere when a key is given); over the log the
//! sequence accounting (docs/FORMAT.md): every seq present once, inside a GAP, or inside a
//! crashed session's possible-loss range `[last seq + 1, seq_reserved)`.
//!
//! Never fails for damage: everything goes into the [`Report`]; `Err` only when the path
//! cannot be listed.
use super::{
    log_segments, scan_segment, verify_segment_chain, walk_segment, ChainCheck, ChainHead,
    ReadError, RecordSink, Scan, ScanOptions, HDR, REC,
};
use crate::record::{kind, FLAG_EMERGENCY, FLAG_SYSTEM, RECORD_SIZE};
use crate::segment::off;
use std::collections::HashSet;
use std::path::Path;

mod accounting;
use accounting::*;

/// (file, byte offset, what).
pub type Finding = (String, u64, String);

/// A SESSION_START .. SESSION_END span of records (file order).
#[derive(Debug, Clone, Default)]
#[allow(missing_docs)]
pub struct Session {
    pub pid: Option<u64>,
    pub first_seq: Option<u64>,
    pub start_wall_ns: Option<u64>,
    pub end_wall_ns: Option<u64>,
    pub records_written: Option<u64>,
    pub dropped_main: Option<u64>,
    pub dropped_emergency: Option<u64>,
    pub ended: bool,
    /// Highest seq among the session's records.
    pub last_seq: Option<u64>,
    /// Highest `seq_reserved` of the segments holding its records (0: field not written).
    pub seq_reserved: u64,
}

/// Consecutive CLOCK records of one synchronisation state.
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct ClockPeriod {
    pub code: u16,
    pub from_wall_ns: u64,
    pub to_wall_ns: u64,
    pub records: u64,
    pub max_error_us: u64,
}

/// Seqs a crashed session may have handed out and lost: `[from, to)`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct PossibleLoss {
    pub pid: Option<u64>,
    pub from: u64,
    pub to: u64,
}

/// Outcome of [`verify_log`]. `ok` only for a clean log.
#[derive(Debug, Default)]
#[allow(missing_docs)]
pub struct Report {
    pub path: String,
    pub ok: bool,
    pub records: u64,
    pub segments: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Seqs missing and covered by GAP records.
    pub gaps_accounted: u64,
    pub gap_records: u64,
    /// Missing seq ranges `(first, last)` covered by nothing.
    pub unaccounted_missing: Vec<(u64, u64)>,
    /// Crashed sessions' possible-loss ranges (missing seqs below their `seq_reserved`).
    pub possible_loss: Vec<PossibleLoss>,
    pub duplicates: Vec<u64>,
    pub torn_tails: Vec<(String, u64)>,
    pub corrupt: Vec<Finding>,
    pub accounting_errors: Vec<String>,
    pub chain_ok: bool,
    pub chain_errors: Vec<Finding>,
    /// The last segment's verified chain head.
    pub chain_head: Option<ChainHead>,
    pub keyed: bool,
    pub clock: Vec<ClockPeriod>,
    pub sessions: Vec<Session>,
    pub notes: Vec<String>,
    /// Record count by kind value.
    pub kinds: Vec<(u8, u64)>,
}

/// Verifies a log directory (segments in index order) or one segment file.
pub fn verify_log(path: &Path, key: Option<&[u8]>) -> Result<Report, ReadError> {
    let segs = log_segments(path)?;
    let single_file = !path.is_dir();
    let mut r = Report {
        path: path.display().to_string(),
        segments: segs.len() as u64,
        chain_ok: true,
        ..Report::default()
    };
    if segs.is_empty() {
        r.corrupt.push((
            r.path.clone(),
            0,
            "no audit log here: no segment files (NNNNNNNNNNNN.seg)".into(),
        ));
        return Ok(r);
    }
    let mut acc = Accum {
        seqs: Vec::new(),
        gaps: Vec::new(),
        kinds: [0; 256],
        clock: Vec::new(),
        sessions: Vec::new(),
        records: 0,
    };
    let mut prev: Option<(u64, ChainHead, String)> = None; // index, final chain, file
    let mut to_locate: Vec<(usize, Scan)> = Vec::new();
    let mut any_keyed = false;
    let mut unkeyed_files: Vec<String> = Vec::new();
    for (pos, seg) in segs.iter().enumerate() {
        let file = seg.display().to_string();
        let is_last = pos + 1 == segs.len();
        let opts = ScanOptions {
            salvage: false,
            check_slack: true,
        };
        let mut sink = SegSink {
            key,
            check: None,
            acc: &mut acc,
        };
        let walked = walk_segment(seg, opts, &mut sink);
        let check = sink.check.take();
        let mut scan = match walked {
            Ok(s) => s,
            Err(ReadError::Corrupt { offset, why, .. }) => {
                r.corrupt.push((file.clone(), offset, why));
                chain_error(
                    &mut r,
                    &file,
                    0,
                    "no readable header: the chain cannot be checked",
                );
                prev = None;
                continue;
            }
            Err(ReadError::Io { source, .. }) => {
                r.corrupt
                    .push((file.clone(), 0, format!("cannot read: {source}")));
                prev = None;
                continue;
            }
        };
        if let Some(d) = &scan.damage {
            r.corrupt.push((file.clone(), d.offset, d.why.clone()));
        }
        if let Some(t) = scan.torn_at {
            r.torn_tails.push((file.clone(), t));
        }
        if let Some((o, n, valid)) = scan.after_committed {
            let h = &scan.header;
            if h.is_recovered() && n == 1 && valid == 0 && o == HDR + h.committed * REC {
                // what recovery leaves of a torn tail: one bad slot right after the records
                r.torn_tails.push((file.clone(), o));
            } else {
                r.corrupt.push((
                    file.clone(),
                    o,
                    format!(
                        "{n} non-zero record slot(s) ({valid} with a valid CRC) after \
                         committed={} of a closed segment: never read (appended after closing, \
                         or forged)",
                        h.committed
                    ),
                ));
            }
        }
        if let Some((o, n)) = scan.past_capacity {
            r.corrupt.push((
                file.clone(),
                o,
                format!(
                    "{n} byte(s) past the segment's capacity of {} records (appended to the \
                     file)",
                    scan.header.capacity
                ),
            ));
        }
        let h = &scan.header;
        let available = scan.file_len.saturating_sub(HDR) / REC;
        if available < h.capacity && scan.damage.is_none() {
            r.notes.push(format!(
                "{file}: the file holds {available} of its {} record slots (trailing slots cut)",
                h.capacity
            ));
        }
        if h.is_keyed() {
            r.keyed = true;
            any_keyed = true;
        } else {
            unkeyed_files.push(file.clone());
        }
        // chain continuity between segments
        let mut expected_prev = None;
        if !single_file {
            match &prev {
                None if pos == 0 && h.segment_index != 0 => chain_error(
                    &mut r,
                    &file,
                    off::PREV_CHAIN as u64,
                    &format!(
                        "segments 0..{} are missing (deleted?): the chain cannot be anchored",
                        h.segment_index - 1
                    ),
                ),
                None if pos == 0 => expected_prev = Some([0u8; 32]),
                Some((pi, _, _)) if h.segment_index != pi + 1 => chain_error(
                    &mut r,
                    &file,
                    off::PREV_CHAIN as u64,
                    &format!(
                        "segment(s) {}..{} missing before this one",
                        pi + 1,
                        h.segment_index.saturating_sub(1)
                    ),
                ),
                Some((_, head, _)) => expected_prev = Some(*head),
                None => {}
            }
        }
        let mut result = match check {
            Some(c) => c.finish(&scan.header, expected_prev.as_ref(), key),
            None => Err((0, "no header".into())),
        };
        if result.is_err() && is_last && !scan.header.is_closed() {
            // a running writer may be between storing chain_head and chain_records
            for _ in 0..3 {
                std::thread::sleep(std::time::Duration::from_millis(2));
                if let Ok(again) = scan_segment(seg, opts) {
                    let res = verify_segment_chain(&again, expected_prev.as_ref(), key);
                    if res.is_ok() {
                        scan = again;
                        result = res;
                        break;
                    }
                }
            }
        }
        let h = &scan.header;
        match result {
            Ok(head) => {
                if is_last {
                    r.chain_head = Some(h.chain_head);
                }
                prev = Some((h.segment_index, head, file.clone()));
            }
            Err((o, why)) => {
                let why = if o == off::PREV_CHAIN as u64 {
                    format!(
                        "{why} [previous: {}]",
                        prev.as_ref().map(|p| p.2.as_str()).unwrap_or("-")
                    )
                } else {
                    why
                };
                chain_error(&mut r, &file, o, &why);
                // read it again (failures only): to point at a record, and to go on from this
                // segment's own records so later segments are still checked
                let again = scan_segment(seg, ScanOptions::default()).ok();
                let mut c = crate::chain::Chain::start(key, &h.prev_chain, h.segment_index);
                if let Some(a) = &again {
                    c.update(a.valid_bytes());
                }
                if let (true, Some(a)) = (o == off::CHAIN_HEAD as u64, again) {
                    to_locate.push((r.chain_errors.len() - 1, a));
                }
                prev = Some((h.segment_index, c.head(), file.clone()));
            }
        }
        if h.is_closed() {
            if h.chain_records != h.committed {
                chain_error(
                    &mut r,
                    &file,
                    off::CHAIN_RECORDS as u64,
                    &format!(
                        "closed segment: chain covers {} records but committed={}",
                        h.chain_records, h.committed
                    ),
                );
            }
            if h.is_recovered() && h.writer_chained < h.committed {
                r.notes.push(format!(
                    "{file}: records {}..{} were chained by recovery after the writer died, not \
                     by their writer (readable, but they never lift a halt)",
                    h.writer_chained, h.committed
                ));
            }
        } else if is_last {
            r.notes.push(format!(
                "{file} is not closed (logger running, or crashed): chain verified over its \
                 first {} of {} records",
                h.chain_records, scan.n_valid
            ));
        } else {
            r.notes.push(format!(
                "{file} was never closed (writer crashed); the next segment must chain from \
                 all its valid records"
            ));
        }
        acc.records += scan.n_valid as u64;
        if let Some(sess) = acc.sessions.last_mut() {
            sess.seq_reserved = sess.seq_reserved.max(h.seq_reserved);
        }
    }
    // keyed stays keyed: one keyed segment makes the log keyed; an unkeyed one then fails
    if key.is_none() && any_keyed {
        for f in &unkeyed_files {
            chain_error(
                &mut r,
                f,
                off::FLAGS as u64,
                "unkeyed segment in a keyed log (KEYED flag cleared, or written without the key)",
            );
        }
    }
    let Accum {
        seqs,
        gaps,
        kinds,
        clock,
        sessions,
        records,
    } = acc;
    r.records = records;
    r.sessions = sessions;
    r.kinds = (0..256)
        .filter(|&k| kinds[k] > 0)
        .map(|k| (k as u8, kinds[k]))
        .collect();
    r.gap_records = gaps.len() as u64;
    account(&mut r, seqs, &gaps);
    crash_losses(&mut r);
    for (err_index, scan) in &to_locate {
        if let Some((i, what)) = locate_tamper(scan, &r) {
            let e = &mut r.chain_errors[*err_index];
            e.1 = HDR + i as u64 * REC;
            e.2 = format!("{}; first suspicious record: {what}", e.2);
        }
    }
    r.clock = clock_periods(clock);
    if r.sessions.last().is_some_and(|s| !s.ended) {
        r.notes
            .push("the last session has no SESSION_END (running or crashed)".into());
    }
    r.ok = r.corrupt.is_empty()
        && r.torn_tails.is_empty()
        && r.unaccounted_missing.is_empty()
        && r.possible_loss.is_empty()
        && r.duplicates.is_empty()
        && r.accounting_errors.is_empty()
        && r.chain_ok;
    Ok(r)
}

/// What verify gathers from the records of every segment.
struct Accum {
    seqs: Vec<u64>,
    gaps: Vec<(u64, u64, u64)>,
    kinds: [u64; 256],
    clock: Vec<(u64, u16, u64)>,
    sessions: Vec<Session>,
    records: u64,
}

impl Accum {
    fn add(&mut self, recs: &[u8]) {
        self.seqs.reserve(recs.len() / RECORD_SIZE);
        for rec in recs.chunks_exact(RECORD_SIZE) {
            let seq = u64_le(rec, 0);
            self.seqs.push(seq);
            let k = rec[24];
            self.kinds[k as usize] += 1;
            if k >= kind::GAP {
                self.system(rec, k);
            }
            if let Some(s) = self.sessions.last_mut() {
                s.last_seq = Some(s.last_seq.map_or(seq, |l| l.max(seq)));
            }
        }
    }

    #[cold]
    fn system(&mut self, rec: &[u8], k: u8) {
        let (a, b, c) = (u64_le(rec, 32), u64_le(rec, 40), u64_le(rec, 48));
        match k {
            kind::GAP => self.gaps.push((a, b, c)),
            kind::CLOCK => self.clock.push((u64_le(rec, 8), u16_le(rec, 26), b)),
            kind::SESSION_START => self.sessions.push(Session {
                pid: Some(a),
                first_seq: Some(b),
                start_wall_ns: Some(u64_le(rec, 8)),
                ..Session::default()
            }),
            kind::SESSION_END => {
                if self.sessions.last().is_none_or(|s| s.ended) {
                    self.sessions.push(Session::default());
                }
                let s = self.sessions.last_mut().expect("pushed");
                s.end_wall_ns = Some(u64_le(rec, 8));
                s.records_written = Some(a);
                s.dropped_main = Some(b);
                s.dropped_emergency = Some(c);
                s.ended = true;
            }
            _ => {}
        }
    }
}

/// Feeds one segment's records to its chain check and to the accumulator, chunk by chunk.
struct SegSink<'a> {
    key: Option<&'a [u8]>,
    check: Option<ChainCheck>,
    acc: &'a mut Accum,
}

impl RecordSink for SegSink<'_> {
    fn header(&mut self, h: &super::SegmentHeader) {
        self.check = Some(ChainCheck::new(h, self.key));
    }
    fn records(&mut self, recs: &[u8], _salvaged: bool) {
        if let Some(c) = &mut self.check {
            c.feed(recs);
        }
        self.acc.add(recs);
    }
}

fn chain_error(r: &mut Report, file: &str, offset: u64, why: &str) {
    r.chain_ok = false;
    r.chain_errors
        .push((file.to_string(), offset, why.to_string()));
}

fn u64_le(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

fn u16_le(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

/// Best guess of the first tampered record of a segment whose chain failed. The chain says
/// *that* a segment changed, not where; seqs give a hint: a seq present twice (an inserted
/// copy), main-ring records out of seq order (main-ring records are written in seq order),
/// or an unaccounted hole (a deletion). None when nothing stands out (an edit that kept the
/// seq): the error then names the header's `chain_head` field.
fn locate_tamper(scan: &Scan, r: &Report) -> Option<(usize, String)> {
    let dups: HashSet<u64> = r.duplicates.iter().copied().collect();
    let holes = &r.unaccounted_missing[..r.unaccounted_missing.len().min(100)];
    let mut seen = HashSet::new();
    let mut last_main: Option<u64> = None;
    for (i, rec) in scan.valid_bytes().chunks_exact(RECORD_SIZE).enumerate() {
        let seq = u64_le(rec, 0);
        if dups.contains(&seq) && !seen.insert(seq) {
            return Some((i, format!("seq {seq} appears twice (inserted copy?)")));
        }
        if rec[25] & (FLAG_SYSTEM | FLAG_EMERGENCY) != 0 {
            continue;
        }
        if let Some(lm) = last_main {
            if seq <= lm {
                return Some((
                    i.saturating_sub(1),
                    format!("main-ring records out of seq order ({lm}, {seq})"),
                ));
            }
            if let Some((lo, hi)) = holes.iter().find(|h| lm < h.0 && seq > h.1) {
                return Some((i, format!("seqs {lo}..{hi} missing before it (deleted?)")));
            }
        }
        last_main = Some(seq);
    }
    None
}
