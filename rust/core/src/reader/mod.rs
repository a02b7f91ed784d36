//! The one reader of segment files (docs/FORMAT.md): recovery, restore, `read_audit_log`,
//! `verify`, `dump` and `follow` all go through [`scan_segment`], which applies the reading
//! rules in one place:
//!
//! - records `[0, committed)` must all be valid; a bad one there is damage (file and offset);
//! - after `committed` of an OPEN segment, records are read while their CRC is valid and they
//!   are not all zero; the first non-zero bad one is a *torn tail*;
//! - in a CLOSED segment nothing at or after `committed` is read (bytes there are reported by
//!   [`verify`], never returned);
//! - nothing in a file is trusted for an allocation: sizes come from the file's real length.
//!
//! Submodules: [`verify`] (chain, keys, sequence accounting), [`render`] (dump text/JSON).
use crate::chain::{Chain, ChainHead};
use crate::record::{Record, CRC_COVERED, RECORD_SIZE};
use crate::segment::{off, FLAG_CLOSED, FLAG_KEYED, FLAG_RECOVERED, HEADER_SIZE, MAGIC, VERSION};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub mod render;
pub mod verify;

/// Header offset of `writer_chained` (docs/FORMAT.md).
pub const OFF_WRITER_CHAINED: usize = 208;
/// Header offset of `seq_reserved` (docs/FORMAT.md).
pub const OFF_SEQ_RESERVED: usize = 216;

const REC: u64 = RECORD_SIZE as u64;
const HDR: u64 = HEADER_SIZE as u64;
/// Records read per step past `committed` (an open segment is mostly zeros: stop early).
const TAIL_CHUNK: u64 = 4096;

/// Why a log could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The file could not be opened or read.
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The file is damaged at `offset`.
    Corrupt {
        /// File.
        path: PathBuf,
        /// Byte offset of the first bad place.
        offset: u64,
        /// What is wrong.
        why: String,
    },
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            ReadError::Corrupt { path, offset, why } => {
                write!(f, "{}: offset {offset}: {why}", path.display())
            }
        }
    }
}

impl std::error::Error for ReadError {}

/// Decoded segment header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct SegmentHeader {
    pub segment_index: u64,
    pub first_seq: u64,
    pub created_wall_ns: u64,
    pub pid: u32,
    pub flags: u32,
    pub capacity: u64,
    pub committed: u64,
    pub chain_records: u64,
    pub chain_head: ChainHead,
    pub prev_chain: ChainHead,
    pub host: String,
    /// RECOVERED segments: records the dead writer had chained itself (0 otherwise).
    pub writer_chained: u64,
    /// Sequence high-water mark of the writer (0 in files older than the field).
    pub seq_reserved: u64,
}

impl SegmentHeader {
    /// True once the writer (or recovery) sealed the segment.
    pub fn is_closed(&self) -> bool {
        self.flags & FLAG_CLOSED != 0
    }
    /// True when the chain is HMAC-SHA256.
    pub fn is_keyed(&self) -> bool {
        self.flags & FLAG_KEYED != 0
    }
    /// True when recovery sealed the segment after its writer died.
    pub fn is_recovered(&self) -> bool {
        self.flags & FLAG_RECOVERED != 0
    }
}

/// A segment read back.
#[derive(Debug)]
pub struct SegmentContents {
    /// Header.
    pub header: SegmentHeader,
    /// Valid records in file order.
    pub records: Vec<Record>,
    /// Byte offset of a torn (invalid, non-zero) record right after the valid ones, if any.
    pub torn_at: Option<u64>,
}

fn corrupt(path: &Path, offset: u64, why: impl Into<String>) -> ReadError {
    ReadError::Corrupt {
        path: path.to_path_buf(),
        offset,
        why: why.into(),
    }
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

/// Decodes a header, checking magic, version, sizes and `committed <= capacity` (not the
/// file length: a truncated file is the scan's business).
fn decode_header(path: &Path, h: &[u8; HEADER_SIZE]) -> Result<SegmentHeader, ReadError> {
    let u16_at = |o: usize| u16::from_le_bytes([h[o], h[o + 1]]);
    if &h[..8] != MAGIC {
        return Err(corrupt(
            path,
            off::MAGIC as u64,
            "bad magic: not a killswitch-audit segment",
        ));
    }
    if u16_at(off::VERSION) != VERSION {
        return Err(corrupt(
            path,
            off::VERSION as u64,
            format!("unsupported format version {}", u16_at(off::VERSION)),
        ));
    }
    if u16_at(off::RECORD_SIZE) as usize != RECORD_SIZE
        || u32_at(h, off::HEADER_SIZE) as usize != HEADER_SIZE
    {
        return Err(corrupt(
            path,
            off::RECORD_SIZE as u64,
            "unexpected record or header size",
        ));
    }
    let capacity = u64_at(h, off::CAPACITY);
    let committed = u64_at(h, off::COMMITTED);
    if committed > capacity {
        return Err(corrupt(
            path,
            off::COMMITTED as u64,
            format!("committed count {committed} exceeds the segment capacity {capacity}"),
        ));
    }
    let host_bytes = &h[off::HOST..off::HOST + off::HOST_LEN];
    let host_end = host_bytes
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(off::HOST_LEN);
    Ok(SegmentHeader {
        segment_index: u64_at(h, off::SEGMENT_INDEX),
        first_seq: u64_at(h, off::FIRST_SEQ),
        created_wall_ns: u64_at(h, off::CREATED_WALL_NS),
        pid: u32_at(h, off::PID),
        flags: u32_at(h, off::FLAGS),
        capacity,
        committed,
        chain_records: u64_at(h, off::CHAIN_RECORDS),
        chain_head: h[off::CHAIN_HEAD..off::CHAIN_HEAD + 32]
            .try_into()
            .expect("32"),
        prev_chain: h[off::PREV_CHAIN..off::PREV_CHAIN + 32]
            .try_into()
            .expect("32"),
        host: String::from_utf8_lossy(&host_bytes[..host_end]).into_owned(),
        writer_chained: u64_at(h, OFF_WRITER_CHAINED),
        seq_reserved: u64_at(h, OFF_SEQ_RESERVED),
    })
}

/// Parses a header, checking magic, version, sizes, and `committed` against the file.
pub fn parse_header(
    path: &Path,
    h: &[u8; HEADER_SIZE],
    file_len: u64,
) -> Result<SegmentHeader, ReadError> {
    let header = decode_header(path, h)?;
    let max_records = file_len.saturating_sub(HDR) / REC;
    if header.committed > max_records {
        return Err(corrupt(
            path,
            off::COMMITTED as u64,
            format!(
                "committed {} exceeds the file ({max_records} records)",
                header.committed
            ),
        ));
    }
    Ok(header)
}

/// True when the 64 bytes are a record: CRC valid and not all zero.
#[inline]
pub fn record_ok(b: &[u8]) -> bool {
    let stored = u32::from_le_bytes([b[60], b[61], b[62], b[63]]);
    crate::crc::crc32c(&b[..CRC_COVERED]) == stored && b.iter().any(|&x| x != 0)
}

/// The first place a scan found damage (records before it are intact).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Byte offset in the file.
    pub offset: u64,
    /// What is wrong.
    pub why: String,
}

/// How to scan.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanOptions {
    /// After damage, keep the intact records that follow (flagged as salvaged).
    pub salvage: bool,
    /// Also look at the bytes after `committed` of a closed segment and past `capacity`
    /// (verify does; readers do not need to).
    pub check_slack: bool,
}

/// One segment after applying the reading rules.
#[derive(Debug)]
pub struct Scan {
    /// File.
    pub path: PathBuf,
    /// Its length in bytes.
    pub file_len: u64,
    /// Header.
    pub header: SegmentHeader,
    /// Bytes of the intact records `[0, n_valid)`, then of the salvaged ones.
    pub data: Vec<u8>,
    /// Intact records before any damage or torn record.
    pub n_valid: usize,
    /// Slot index of each salvaged record (`data` after `n_valid`), salvage mode only.
    pub salvaged_slots: Vec<u64>,
    /// Byte offset of a torn record right after the valid ones (open segments).
    pub torn_at: Option<u64>,
    /// The first damage: a bad committed record, a truncated file, a misnamed file.
    pub damage: Option<Damage>,
    /// CLOSED segment: (offset of the first, count of) non-zero record slots at or after
    /// `committed` (never read as records). `check_slack` only.
    pub after_committed: Option<(u64, u64)>,
    /// (offset, length) of bytes past `capacity` (appended to the file). `check_slack` only.
    pub past_capacity: Option<(u64, u64)>,
}

impl Scan {
    /// The intact records' bytes.
    pub fn valid_bytes(&self) -> &[u8] {
        &self.data[..self.n_valid * RECORD_SIZE]
    }
    /// Number of records held (intact + salvaged).
    pub fn len(&self) -> usize {
        self.data.len() / RECORD_SIZE
    }
    /// True when no record was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

fn first_bad(data: &[u8]) -> Option<usize> {
    data.chunks_exact(RECORD_SIZE).position(|r| !record_ok(r))
}

/// Segment index from a file name `NNNNNNNNNNNN.seg`.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Reads one segment file by the reading rules. `Err` only when the header is unusable or
/// the file cannot be read; damage to records is in [`Scan::damage`].
pub fn scan_segment(path: &Path, opts: ScanOptions) -> Result<Scan, ReadError> {
    let io_err = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let file_len = file.metadata().map_err(io_err)?.len();
    if file_len < HDR {
        return Err(corrupt(
            path,
            file_len,
            format!("file is {file_len} bytes, shorter than the {HEADER_SIZE}-byte segment header"),
        ));
    }
    let mut h = [0u8; HEADER_SIZE];
    file.read_exact_at(&mut h, 0).map_err(io_err)?;
    let header = decode_header(path, &h)?;
    let mut scan = Scan {
        path: path.to_path_buf(),
        file_len,
        data: Vec::new(),
        n_valid: 0,
        salvaged_slots: Vec::new(),
        torn_at: None,
        damage: None,
        after_committed: None,
        past_capacity: None,
        header,
    };
    let h = &scan.header;
    if let Some(named) = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_segment_name)
    {
        if named != h.segment_index {
            scan.damage = Some(Damage {
                offset: off::SEGMENT_INDEX as u64,
                why: format!(
                    "header says segment {} but the file is named for segment {named}",
                    h.segment_index
                ),
            });
            return Ok(scan);
        }
    }
    let available = (file_len - HDR) / REC;
    let limit = h.capacity.min(available);
    let committed = h.committed.min(available);
    let (closed, capacity, declared) = (h.is_closed(), h.capacity, h.committed);
    let read = |from: u64, count: u64| -> Result<Vec<u8>, ReadError> {
        let mut buf = vec![0u8; (count * REC) as usize];
        file.read_exact_at(&mut buf, HDR + from * REC)
            .map_err(io_err)?;
        Ok(buf)
    };
    scan.data = read(0, committed)?;
    if let Some(bad) = first_bad(&scan.data) {
        let rec = &scan.data[bad * RECORD_SIZE..(bad + 1) * RECORD_SIZE];
        let what = if rec.iter().all(|&b| b == 0) {
            "is all zero"
        } else {
            "fails its CRC-32C check"
        };
        scan.damage = Some(Damage {
            offset: HDR + bad as u64 * REC,
            why: format!("record {bad} (below committed={declared}) {what}"),
        });
        scan.n_valid = bad;
        if opts.salvage {
            let rest = scan.data.split_off(bad * RECORD_SIZE);
            for (j, r) in rest.chunks_exact(RECORD_SIZE).enumerate().skip(1) {
                if record_ok(r) {
                    scan.data.extend_from_slice(r);
                    scan.salvaged_slots.push((bad + j) as u64);
                }
            }
        } else {
            scan.data.truncate(bad * RECORD_SIZE);
        }
    } else {
        scan.n_valid = committed as usize;
        if declared > available {
            scan.damage = Some(Damage {
                offset: HDR + available * REC,
                why: format!(
                    "file truncated: committed={declared} records but the file holds only \
                     {available} ({file_len} bytes)"
                ),
            });
        } else if !closed {
            scan_tail(&mut scan, &read, committed, limit, opts.salvage)?;
        }
    }
    if opts.check_slack {
        if closed && committed < limit {
            let mut at = committed;
            while at < limit && scan.after_committed.is_none() {
                let n = (limit - at).min(TAIL_CHUNK * 16);
                let chunk = read(at, n)?;
                let nonzero = chunk
                    .chunks_exact(RECORD_SIZE)
                    .filter(|r| r.iter().any(|&b| b != 0))
                    .count() as u64;
                if let Some(i) = chunk
                    .chunks_exact(RECORD_SIZE)
                    .position(|r| r.iter().any(|&b| b != 0))
                {
                    scan.after_committed = Some((HDR + (at + i as u64) * REC, nonzero));
                }
                at += n;
            }
        }
        let end = HDR + capacity.saturating_mul(REC);
        if file_len > end {
            scan.past_capacity = Some((end, file_len - end));
        }
    }
    Ok(scan)
}

/// Reads past `committed` of an open segment: records while valid; the first bad non-zero
/// one is torn. With `salvage`, valid records after a torn one are kept (up to a zero slot).
fn scan_tail(
    scan: &mut Scan,
    read: &dyn Fn(u64, u64) -> Result<Vec<u8>, ReadError>,
    from: u64,
    limit: u64,
    salvage: bool,
) -> Result<(), ReadError> {
    let mut at = from;
    let mut chunk_len = 256u64;
    let mut torn = false;
    while at < limit {
        let n = (limit - at).min(chunk_len);
        let chunk = read(at, n)?;
        for (i, r) in chunk.chunks_exact(RECORD_SIZE).enumerate() {
            let slot = at + i as u64;
            let zero = r.iter().all(|&b| b == 0);
            if zero {
                return Ok(());
            }
            if record_ok(r) {
                scan.data.extend_from_slice(r);
                if torn {
                    scan.salvaged_slots.push(slot);
                } else {
                    scan.n_valid += 1;
                }
            } else if !torn {
                scan.torn_at = Some(HDR + slot * REC);
                if !salvage {
                    return Ok(());
                }
                torn = true;
            }
        }
        at += n;
        chunk_len = (chunk_len * 2).min(TAIL_CHUNK);
    }
    Ok(())
}

/// Reads one segment: every committed record must be valid (else `Corrupt`); after them,
/// records are read while valid (open segments only); a torn one is reported, not returned.
pub fn read_segment(path: &Path) -> Result<SegmentContents, ReadError> {
    let scan = scan_segment(path, ScanOptions::default())?;
    if let Some(d) = scan.damage {
        return Err(corrupt(path, d.offset, d.why));
    }
    let records = scan
        .valid_bytes()
        .chunks_exact(RECORD_SIZE)
        .map(|r| Record::from_bytes(r.try_into().expect("64 bytes")))
        .collect();
    Ok(SegmentContents {
        header: scan.header,
        records,
        torn_at: scan.torn_at,
    })
}

/// The segment files of a directory, sorted by index (`NNNNNNNNNNNN.seg` only).
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(index) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_segment_name)
        else {
            continue;
        };
        out.push((index, path));
    }
    out.sort();
    Ok(out)
}

/// The segments of a log: a directory's `*.seg` files in index order, or one file.
pub fn log_segments(path: &Path) -> Result<Vec<PathBuf>, ReadError> {
    let io_err = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if meta.is_dir() {
        Ok(list_segments(path)
            .map_err(io_err)?
            .into_iter()
            .map(|(_, p)| p)
            .collect())
    } else {
        Ok(vec![path.to_path_buf()])
    }
}

/// Every valid record of a directory (or one segment file), in file order.
pub fn read_all(path: &Path) -> Result<Vec<Record>, ReadError> {
    let mut out = Vec::new();
    for seg in log_segments(path)? {
        out.extend(read_segment(&seg)?.records);
    }
    Ok(out)
}

/// Why a segment's chain does not verify: (byte offset, what).
pub type ChainFailure = (u64, String);

/// Checks that `chain_head` of a segment is the chain over its first `chain_records` records,
/// started from `prev_chain` (which must equal `expected_prev` when given) with `key` (must
/// be given exactly when the segment is KEYED). Returns the chain value over *all* its valid
/// records (what the next segment's `prev_chain` must be) and the head verified over
/// `chain_records`. Restore uses it to decide whether records may lift a restriction: only
/// records below `chain_records` (and, when RECOVERED, below `writer_chained`) are covered.
pub fn verify_segment_chain(
    scan: &Scan,
    expected_prev: Option<&ChainHead>,
    key: Option<&[u8]>,
) -> Result<ChainHead, ChainFailure> {
    let h = &scan.header;
    if h.is_keyed() != key.is_some() {
        return Err(if key.is_some() {
            (
                off::FLAGS as u64,
                "segment is not KEYED but the log is: its chain is not an HMAC under the key"
                    .into(),
            )
        } else {
            (
                off::FLAGS as u64,
                "segment is KEYED (HMAC-SHA256) but no key was given: set \
                 KILLSWITCH_AUDIT_HMAC_KEY (hex) or pass key="
                    .into(),
            )
        });
    }
    if let Some(prev) = expected_prev {
        if &h.prev_chain != prev {
            return Err((
                off::PREV_CHAIN as u64,
                "prev_chain does not match the final chain of the previous segment (a segment \
                 was replaced, edited or removed)"
                    .into(),
            ));
        }
    }
    let cr = h.chain_records;
    if cr > scan.n_valid as u64 {
        return Err((
            HDR + scan.n_valid as u64 * REC,
            format!(
                "chain covers {cr} records but only {} valid records are present (records \
                 removed or the segment truncated)",
                scan.n_valid
            ),
        ));
    }
    let data = scan.valid_bytes();
    let mut chain = Chain::start(key, &h.prev_chain, h.segment_index);
    chain.update(&data[..cr as usize * RECORD_SIZE]);
    let started = cr > 0 || h.chain_head != [0; 32] || h.is_closed();
    if started && chain.head() != h.chain_head {
        return Err((
            off::CHAIN_HEAD as u64,
            format!(
                "chain head over the first {cr} records does not match: records were edited, \
                 inserted, deleted or reordered{}",
                if key.is_some() {
                    " (or the HMAC key is wrong)"
                } else {
                    ""
                }
            ),
        ));
    }
    chain.update(&data[cr as usize * RECORD_SIZE..]);
    Ok(chain.head())
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

#[cfg(test)]
mod tests;
