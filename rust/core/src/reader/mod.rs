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
//! Submodules: `scan` (the chunked walk of one segment), [`verify`] (chain, keys, sequence
//! accounting), [`render`] (dump text/JSON).
pub use crate::chain::ChainHead;
use crate::record::{Record, RECORD_SIZE};
use crate::segment::{off, FLAG_CLOSED, FLAG_KEYED, FLAG_RECOVERED, HEADER_SIZE, MAGIC, VERSION};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

mod chain_check;
pub mod render;
mod scan;
pub mod verify;

pub use chain_check::{verify_segment_chain, verify_segment_file_chain, ChainCheck, ChainFailure};
pub use scan::{record_ok, scan_segment, walk_segment, Damage, RecordSink, Scan, ScanOptions};

/// Header offset of `writer_chained` (docs/FORMAT.md).
pub const OFF_WRITER_CHAINED: usize = 208;
/// Header offset of `seq_reserved` (docs/FORMAT.md).
pub const OFF_SEQ_RESERVED: usize = 216;

const REC: u64 = RECORD_SIZE as u64;
const HDR: u64 = HEADER_SIZE as u64;

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

/// Segment index from a file name `NNNNNNNNNNNN.seg`.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
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

/// An upper bound of the records a segment file can hold: `min(capacity, whole slots)`
/// (0 when its header is unreadable). Sizes a buffer to read the file into.
pub fn segment_slots(path: &Path) -> u64 {
    let read = || -> io::Result<u64> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut h = [0u8; HEADER_SIZE];
        file.read_exact_at(&mut h, 0)?;
        Ok(u64_at(&h, off::CAPACITY).min(len.saturating_sub(HDR) / REC))
    };
    read().unwrap_or(0)
}

/// Every valid record of a directory (or one segment file), in file order.
pub fn read_all(path: &Path) -> Result<Vec<Record>, ReadError> {
    let mut out = Vec::new();
    for seg in log_segments(path)? {
        out.extend(read_segment(&seg)?.records);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
