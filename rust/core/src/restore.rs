//! Restore: the kill switch's latched state rebuilt from an audit directory at start, with one
//! asymmetric rule. **Evidence that restricts trading is believed; evidence that lifts a
//! restriction must be authenticated.**
//!
//! - A restriction counts wherever a CRC-valid record says so (KILL_SWITCH: HALTED;
//!   STATE_CHANGE to REDUCING/HALTED), in any segment, chained or not, before or after damage,
//!   and wherever the latch file (`halt.state`) holds one.
//! - A lift (an accepted RESET, a STATE_CHANGE to ACTIVE) counts only when the writer's own
//!   hash chain covers it: the record lies below `chain_records` of a segment whose
//!   `chain_head` verifies (HMAC with the log's key when keyed), whose `prev_chain` links to the
//!   previous segment, and, in a segment sealed by recovery (`RECOVERED`), below the
//!   `writer_chained` count the dead writer itself had chained.
//! - Anything unverifiable (a bad record, header or chain, a missing segment, an unkeyed
//!   segment in a keyed log, a seq out of range, a damaged latch slot, a lift the chain does
//!   not cover that would have changed the state) becomes a firm HALT with a note naming the
//!   file and offset. A later authenticated firm reset (the operator's, after investigating)
//!   lifts it.
//!
//! This scan is separate from the reader on purpose: the reader stops at the first damage
//! and reports it; restore must read past damage, because a halt after it still counts.
use crate::chain::{Chain, ChainHead};
use crate::gate::{ACTIVE, HALTED, REDUCING};
use crate::latch;
use crate::reader::{list_segments, parse_header};
use crate::record::{kind, Record, RECORD_SIZE};
use crate::segment::{FLAG_KEYED, FLAG_RECOVERED, HEADER_SIZE};
use std::collections::BTreeMap;
use std::path::Path;

/// Seqs at or above this are out of range whatever the header says (the counter never gets
/// near it: 2^62 records at 100 M/s is 1,400 years).
const SEQ_LIMIT: u64 = 1 << 62;
const WRITER_CHAINED: usize = 208;
const SEQ_RESERVED: usize = 216;

/// The standing restriction of one scope id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// Scope id (0: firm).
    pub scope_id: u64,
    /// REDUCING or HALTED.
    pub state: u8,
    /// Seq of the latest restriction (latch entries without one: u64::MAX).
    pub seq: u64,
}

/// What restore found.
#[derive(Debug, Default)]
pub struct Restored {
    /// Restrictions standing after every authenticated lift.
    pub standing: Vec<Standing>,
    /// Seq of the latest authenticated firm lift (it also supersedes restrictions whose scope
    /// cannot be named, and damage before it).
    pub firm_lift_seq: Option<u64>,
    /// Scope texts found (TEXT `scope:` records and the latch): the caller maps scope ids to
    /// scopes by recomputing each text's id, so a forged text cannot redirect a halt.
    pub scope_texts: Vec<String>,
    /// Damage: (the highest seq read before it, "file: offset N: why"). Each is a firm halt
    /// unless an authenticated firm lift comes after it.
    pub damage: Vec<(u64, String)>,
    /// Lifts that did not count (not covered by the writer's chain), with where they are.
    pub unauthenticated_lifts: Vec<String>,
    /// Records read.
    pub records: u64,
}

enum Event {
    Restrict(u8),
    Lift { authenticated: bool, at: String },
}

struct Scan<'a> {
    key: Option<&'a [u8]>,
    events: BTreeMap<u64, Vec<(u64, Event)>>,
    /// TEXT chunks by the seq they are attached to.
    texts: BTreeMap<u64, BTreeMap<u16, [u8; 20]>>,
    out: Restored,
    max_seq: u64,
}

/// Rebuilds the restrictions of `dir` (its segments and its latch file). `key`: the log's
/// HMAC key (None: plain SHA-256 chains, which authenticate nothing against someone who can
/// write the directory, only against accidental damage; docs/COMPLIANCE.md says so).
pub fn restore(dir: &Path, key: Option<&[u8]>) -> Restored {
    let mut scan = Scan {
        key,
        events: BTreeMap::new(),
        texts: BTreeMap::new(),
        out: Restored::default(),
        max_seq: 0,
    };
    match list_segments(dir) {
        Ok(segments) => {
            let mut prev: Option<(u64, ChainHead)> = None;
            for (index, path) in &segments {
                prev = scan.segment(*index, path, prev);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => scan.damage(format!("{}: cannot list segments: {e}", dir.display())),
    }
    scan.latch(dir);
    scan.finish()
}

impl Scan<'_> {
    fn damage(&mut self, what: String) {
        self.out.damage.push((self.max_seq, what));
    }

    /// Scans one segment; returns (index, final chain) for the next one's link check.
    fn segment(
        &mut self,
        index: u64,
        path: &Path,
        prev: Option<(u64, ChainHead)>,
    ) -> Option<(u64, ChainHead)> {
        let p = path.display().to_string();
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                self.damage(format!("{p}: unreadable: {e}"));
                return None;
            }
        };
        if bytes.len() < HEADER_SIZE {
            self.damage(format!(
                "{p}: offset {}: shorter than a segment header",
                bytes.len()
            ));
            return None;
        }
        let raw: &[u8; HEADER_SIZE] = bytes[..HEADER_SIZE].try_into().expect("header size");
        let header = match parse_header(path, raw, bytes.len() as u64) {
            Ok(h) => h,
            Err(e) => {
                self.damage(format!("{e}"));
                return None;
            }
        };
        let u64_at = |o: usize| u64::from_le_bytes(raw[o..o + 8].try_into().expect("8 bytes"));
        let (writer_chained, seq_reserved) = (u64_at(WRITER_CHAINED), u64_at(SEQ_RESERVED));
        // the chain links segments: a gap in the indices or a broken link is a deletion
        match prev {
            None if index != 0 => self.damage(format!(
                "{p}: segment index {index} but no segment before it (segments deleted?)"
            )),
            None if header.prev_chain != [0; 32] => self.damage(format!(
                "{p}: offset 104: first segment links to a predecessor"
            )),
            Some((pi, _)) if pi + 1 != index => {
                self.damage(format!("{p}: segment {} missing before it", pi + 1))
            }
            Some((_, head)) if head != header.prev_chain => self.damage(format!(
                "{p}: offset 104: prev_chain does not match the previous segment's chain"
            )),
            _ => {}
        }
        let keyed = header.flags & FLAG_KEYED != 0;
        let mut chain_ok = true;
        if self.key.is_some() && !keyed {
            self.damage(format!("{p}: offset 44: unkeyed segment in a keyed log"));
            chain_ok = false;
        }
        if self.key.is_none() && keyed {
            // cannot check it: nothing in it may lift a restriction
            chain_ok = false;
        }
        let available = ((bytes.len() - HEADER_SIZE) / RECORD_SIZE) as u64;
        let limit = header.capacity.min(available);
        if header.committed > limit || header.chain_records > header.committed.max(limit) {
            self.damage(format!(
                "{p}: offset 56: committed {} / chain_records {} beyond the file",
                header.committed, header.chain_records
            ));
            chain_ok = false;
        }
        let mut chain = Chain::start(
            if keyed { self.key } else { None },
            &header.prev_chain,
            index,
        );
        let mut authenticated = header.chain_records.min(limit);
        if header.flags & FLAG_RECOVERED != 0 {
            authenticated = authenticated.min(writer_chained);
        }
        let rec_end = if header.is_closed() {
            header.committed.min(limit)
        } else {
            limit
        };
        // first pass: the chain over what the writer says it chained
        for i in 0..header.chain_records.min(limit) {
            let o = HEADER_SIZE + i as usize * RECORD_SIZE;
            chain.update(&bytes[o..o + RECORD_SIZE]);
        }
        let head = chain.head();
        // a segment whose writer has chained nothing yet may carry no head at all
        let nothing_chained = header.chain_records == 0 && header.chain_head == [0; 32];
        if chain_ok && head != header.chain_head && !nothing_chained {
            self.damage(format!(
                "{p}: offset 72: chain_head does not verify over {} records",
                header.chain_records
            ));
            chain_ok = false;
        }
        if !chain_ok {
            authenticated = 0;
        }
        for i in 0..rec_end {
            let o = HEADER_SIZE + i as usize * RECORD_SIZE;
            let b: &[u8; RECORD_SIZE] = bytes[o..o + RECORD_SIZE].try_into().expect("64");
            if !Record::crc_ok(b) || b.iter().all(|&x| x == 0) {
                if i < header.committed {
                    self.damage(format!("{p}: offset {o}: record checksum mismatch"));
                    continue;
                }
                break; // the end of an open segment (a torn tail is the reader's to report)
            }
            let r = Record::from_bytes(b);
            self.out.records += 1;
            if r.seq >= SEQ_LIMIT || (seq_reserved != 0 && r.seq >= seq_reserved) {
                self.damage(format!(
                    "{p}: offset {o}: seq {} out of range (reserved up to {seq_reserved})",
                    r.seq
                ));
                continue;
            }
            self.max_seq = self.max_seq.max(r.seq);
            self.record(&r, i < authenticated, || format!("{p}: offset {o}"));
        }
        let final_head = if header.is_closed() {
            header.chain_head
        } else {
            head
        };
        Some((index, final_head))
    }

    fn record(&mut self, r: &Record, authenticated: bool, at: impl Fn() -> String) {
        let event = match r.kind {
            kind::KILL_SWITCH => Event::Restrict(HALTED),
            kind::STATE_CHANGE if r.code == ACTIVE as u16 => Event::Lift {
                authenticated,
                at: at(),
            },
            kind::STATE_CHANGE => Event::Restrict(if r.code == REDUCING as u16 {
                REDUCING
            } else {
                HALTED // REDUCING or HALTED; anything unknown restricts fully
            }),
            kind::RESET if r.code == 0 && r.b == ACTIVE as i64 => Event::Lift {
                authenticated,
                at: at(),
            },
            kind::TEXT => {
                let mut chunk = [0u8; 20];
                chunk[..8].copy_from_slice(&r.a.to_le_bytes());
                chunk[8..16].copy_from_slice(&r.b.to_le_bytes());
                chunk[16..].copy_from_slice(&r.symbol_id.to_le_bytes());
                self.texts.entry(r.c).or_default().insert(r.code, chunk);
                return;
            }
            _ => return,
        };
        self.events.entry(r.c).or_default().push((r.seq, event));
    }

    fn latch(&mut self, dir: &Path) {
        let contents = latch::read(dir);
        for d in contents.damage {
            self.damage(d);
        }
        for l in contents.latched {
            if l.state == ACTIVE {
                continue;
            }
            self.out.scope_texts.push(l.text.clone());
            let state = if l.state == REDUCING {
                REDUCING
            } else {
                HALTED
            };
            self.events
                .entry(l.scope_id)
                .or_default()
                .push((l.seq, Event::Restrict(state)));
        }
    }

    fn finish(mut self) -> Restored {
        for chunks in self.texts.values() {
            let mut text = Vec::with_capacity(chunks.len() * 20);
            for c in chunks.values() {
                let end = c.iter().rposition(|&b| b != 0).map_or(0, |e| e + 1);
                text.extend_from_slice(&c[..end]);
            }
            if let Some(scope) = String::from_utf8_lossy(&text).strip_prefix("scope:") {
                self.out.scope_texts.push(scope.to_owned());
            }
        }
        self.out.scope_texts.sort();
        self.out.scope_texts.dedup();
        for (scope_id, mut events) in std::mem::take(&mut self.events) {
            events.sort_by_key(|(seq, _)| *seq);
            let (mut state, mut seq) = (ACTIVE, 0u64);
            for (s, e) in events {
                match e {
                    Event::Restrict(level) => {
                        state = state.max(level);
                        seq = s;
                    }
                    Event::Lift {
                        authenticated: true,
                        ..
                    } => {
                        state = ACTIVE;
                        if scope_id == 0 {
                            self.out.firm_lift_seq = Some(s);
                        }
                    }
                    Event::Lift {
                        authenticated: false,
                        at,
                    } => {
                        if state != ACTIVE {
                            self.out.unauthenticated_lifts.push(at.clone());
                            self.out.damage.push((
                                s,
                                format!(
                                    "{at}: a reset the writer's chain does not cover \
                                     (unverifiable: ignored)"
                                ),
                            ));
                        }
                    }
                }
            }
            if state != ACTIVE {
                self.out.standing.push(Standing {
                    scope_id,
                    state,
                    seq,
                });
            }
        }
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logger::{Logger, LoggerConfig, RingId};

    fn open(dir: &Path, key: Option<&[u8]>) -> Logger {
        let mut c = LoggerConfig::new(dir);
        c.segment_bytes = 1 << 20;
        c.hmac_key = key.map(|k| k.to_vec());
        Logger::open(c).unwrap()
    }

    fn state_change(lg: &Logger, new: u8, old: u8, scope_id: u64) -> u64 {
        lg.append(
            RingId::Emergency,
            kind::STATE_CHANGE,
            new as u16,
            0,
            old as i64,
            0,
            scope_id,
        )
        .unwrap()
    }

    #[test]
    fn halts_stand_and_authenticated_resets_lift() {
        let dir = tempfile::tempdir().unwrap();
        let lg = open(dir.path(), Some(b"k"));
        lg.audit_kill_switch(3, 0, 0, 0).unwrap();
        state_change(&lg, HALTED, ACTIVE, 0);
        state_change(&lg, REDUCING, ACTIVE, 77);
        lg.close();
        let r = restore(dir.path(), Some(b"k"));
        assert!(r.damage.is_empty(), "{:?}", r.damage);
        assert_eq!(r.standing.len(), 2);
        let lg = open(dir.path(), Some(b"k"));
        lg.append(RingId::Emergency, kind::RESET, 0, 0, 2, 0, 0)
            .unwrap();
        state_change(&lg, ACTIVE, HALTED, 0);
        lg.close();
        let r = restore(dir.path(), Some(b"k"));
        assert!(r.damage.is_empty(), "{:?}", r.damage);
        assert_eq!(
            r.standing,
            vec![Standing {
                scope_id: 77,
                state: REDUCING,
                seq: r.standing[0].seq
            }]
        );
        assert!(r.firm_lift_seq.is_some());
    }

    #[test]
    fn a_reset_the_chain_does_not_cover_does_not_lift() {
        let dir = tempfile::tempdir().unwrap();
        let lg = open(dir.path(), None);
        state_change(&lg, HALTED, ACTIVE, 0);
        assert!(lg.flush(None, false));
        // a reset appended to the file past what the writer chained (a dead writer's tail
        // or a forgery): simulate by not letting the chainer catch up, then forge directly
        drop(lg);
        let seg = dir.path().join("000000000001.seg");
        let _ = seg; // the second session's segment is not needed: forge into segment 0
        let seg0 = dir.path().join("000000000000.seg");
        let mut bytes = std::fs::read(&seg0).unwrap();
        let committed = u64::from_le_bytes(bytes[56..64].try_into().unwrap()) as usize;
        // rewrite the HALTED state change as ACTIVE with a valid CRC (the attacker's edit)
        for i in 0..committed {
            let o = HEADER_SIZE + i * RECORD_SIZE;
            let mut r = Record::from_bytes(bytes[o..o + 64].try_into().unwrap());
            if r.kind == kind::STATE_CHANGE {
                r.code = ACTIVE as u16;
                bytes[o..o + 64].copy_from_slice(&r.to_bytes());
            }
        }
        std::fs::write(&seg0, &bytes).unwrap();
        let r = restore(dir.path(), None);
        // the edit breaks the chain: the lift does not count and the damage halts the firm
        assert!(!r.damage.is_empty());
        assert!(r.firm_lift_seq.is_none());
    }
}
