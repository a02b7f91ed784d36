//! Whether a segment's hash chain verifies: `chain_head` over its first `chain_records`
//! records, started from `prev_chain`, HMAC exactly when KEYED. Used record by record by
//! `verify` (streaming) and on a whole [`Scan`] by restore.
use super::{scan_segment, ReadError, Scan, ScanOptions, SegmentHeader, HDR, REC};
use crate::chain::{Chain, ChainHead};
use crate::record::RECORD_SIZE;
use crate::segment::off;
use std::path::Path;

/// Why a segment's chain does not verify: (byte offset, what).
pub type ChainFailure = (u64, String);

/// A segment's chain, fed records in file order; keeps its value at `chain_records`.
pub struct ChainCheck {
    chain: Chain,
    chain_records: u64,
    fed: u64,
    at_chain_records: Option<ChainHead>,
}

impl ChainCheck {
    /// Starts the chain of the segment of `h` (HMAC with `key`).
    pub fn new(h: &SegmentHeader, key: Option<&[u8]>) -> ChainCheck {
        let chain = Chain::start(key, &h.prev_chain, h.segment_index);
        let at_chain_records = (h.chain_records == 0).then(|| chain.head());
        ChainCheck {
            chain,
            chain_records: h.chain_records,
            fed: 0,
            at_chain_records,
        }
    }

    /// Adds whole records.
    pub fn feed(&mut self, recs: &[u8]) {
        let n = (recs.len() / RECORD_SIZE) as u64;
        let before = self.chain_records.saturating_sub(self.fed).min(n);
        if before > 0 {
            let cut = before as usize * RECORD_SIZE;
            self.chain.update(&recs[..cut]);
            self.fed += before;
            if self.fed == self.chain_records {
                self.at_chain_records = Some(self.chain.head());
            }
            self.chain.update(&recs[cut..]);
        } else {
            self.chain.update(recs);
        }
        self.fed += n - before;
    }

    /// Checks the header against what was fed (`n_valid` records): `Ok` is the chain value
    /// over all of them (what the next segment's `prev_chain` must be).
    pub fn finish(
        self,
        h: &SegmentHeader,
        expected_prev: Option<&ChainHead>,
        key: Option<&[u8]>,
    ) -> Result<ChainHead, ChainFailure> {
        if h.is_keyed() != key.is_some() {
            return Err((
                off::FLAGS as u64,
                if key.is_some() {
                    "segment is not KEYED but the log is: its chain is not an HMAC under the key"
                } else {
                    "segment is KEYED (HMAC-SHA256) but no key was given: set \
                     KILLSWITCH_AUDIT_HMAC_KEY (hex) or pass key="
                }
                .into(),
            ));
        }
        if expected_prev.is_some_and(|p| p != &h.prev_chain) {
            return Err((
                off::PREV_CHAIN as u64,
                "prev_chain does not match the final chain of the previous segment (a segment \
                 was replaced, edited or removed)"
                    .into(),
            ));
        }
        let Some(at_cr) = self.at_chain_records else {
            return Err((
                HDR + self.fed * REC,
                format!(
                    "chain covers {} records but only {} valid records are present (records \
                     removed or the segment truncated)",
                    self.chain_records, self.fed
                ),
            ));
        };
        let started = self.chain_records > 0 || h.chain_head != [0; 32] || h.is_closed();
        if started && at_cr != h.chain_head {
            return Err((
                off::CHAIN_HEAD as u64,
                format!(
                    "chain head over the first {} records does not match: records were edited, \
                     inserted, deleted or reordered{}",
                    self.chain_records,
                    if key.is_some() {
                        " (or the HMAC key is wrong)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        Ok(self.chain.head())
    }
}

/// Checks that `chain_head` of a segment is the chain over its first `chain_records` records,
/// started from `prev_chain` (which must equal `expected_prev` when given) with `key` (must
/// be given exactly when the segment is KEYED). Returns the chain value over *all* its valid
/// records (what the next segment's `prev_chain` must be). Restore uses it to decide whether
/// records may lift a restriction: only records below `chain_records` (and, when RECOVERED,
/// below `writer_chained`) are covered by their writer's chain.
pub fn verify_segment_chain(
    scan: &Scan,
    expected_prev: Option<&ChainHead>,
    key: Option<&[u8]>,
) -> Result<ChainHead, ChainFailure> {
    let mut check = ChainCheck::new(&scan.header, key);
    check.feed(scan.valid_bytes());
    check.finish(&scan.header, expected_prev, key)
}

/// [`verify_segment_chain`] on a file: reads it, then checks its chain.
pub fn verify_segment_file_chain(
    path: &Path,
    expected_prev: Option<&ChainHead>,
    key: Option<&[u8]>,
) -> Result<(SegmentHeader, ChainHead), ChainFailure> {
    let scan = scan_segment(path, ScanOptions::default()).map_err(|e| match e {
        ReadError::Corrupt { offset, why, .. } => (offset, why),
        ReadError::Io { source, .. } => (0, source.to_string()),
    })?;
    if let Some(d) = &scan.damage {
        return Err((d.offset, d.why.clone()));
    }
    let head = verify_segment_chain(&scan, expected_prev, key)?;
    Ok((scan.header, head))
}
