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
pub mod verify;

pub use chain_check::{verify_segment_chain, verify_segment_file_chain, ChainCheck, ChainFailure};

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

/// True when the 64 bytes are a record: CRC valid and not all zero.
#[inline]
pub fn record_ok(b: &[u8]) -> bool {
    crate::crc::record_crc_matches(b) && b.iter().any(|&x| x != 0)
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
    /// CLOSED segment: (offset of the first, count of, count with a valid CRC of) non-zero
    /// record slots at or after `committed` (never read as records). `check_slack` only.
    pub after_committed: Option<(u64, u64, u64)>,
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

/// The first record of `data` that is not [`record_ok`] (an all-zero record fails its CRC).
fn first_bad(data: &[u8]) -> Option<usize> {
    crate::crc::first_record_mismatch(data)
}

/// Segment index from a file name `NNNNNNNNNNNN.seg`.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Receives a segment's records as [`walk_segment`] reads them, chunk by chunk, while the
/// chunk is still in cache (verify hashes and accounts in the same pass).
pub trait RecordSink {
    /// The header, before any record.
    fn header(&mut self, _h: &SegmentHeader) {}
    /// Whole 64-byte records in file order; `salvaged` for intact records after damage.
    fn records(&mut self, recs: &[u8], salvaged: bool);
}

struct Collect<'a>(&'a mut Vec<u8>);

impl RecordSink for Collect<'_> {
    fn records(&mut self, recs: &[u8], _salvaged: bool) {
        self.0.extend_from_slice(recs);
    }
}

/// Records read per `pread` (1 MiB: stays in cache while it is checked and hashed).
const CHUNK: u64 = 16_384;

/// Reads one segment file by the reading rules into [`Scan::data`]. `Err` only when the
/// header is unusable or the file cannot be read; damage to records is in [`Scan::damage`].
pub fn scan_segment(path: &Path, opts: ScanOptions) -> Result<Scan, ReadError> {
    let mut data = Vec::new();
    let mut scan = walk_segment(path, opts, &mut Collect(&mut data))?;
    scan.data = data;
    Ok(scan)
}

/// [`scan_segment`] without keeping the records: they go to `sink` (`Scan::data` is empty).
pub fn walk_segment(
    path: &Path,
    opts: ScanOptions,
    sink: &mut dyn RecordSink,
) -> Result<Scan, ReadError> {
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
    sink.header(&header);
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
    let mut rd = Chunks {
        file,
        path,
        buf: vec![0u8; (CHUNK * REC) as usize],
    };
    // [0, committed): all must be valid
    let mut at = 0u64;
    let mut bad: Option<u64> = None;
    while at < committed && (bad.is_none() || opts.salvage) {
        let n = (committed - at).min(CHUNK);
        let chunk = rd.read(at, n)?;
        if bad.is_none() {
            match first_bad(chunk) {
                None => {
                    sink.records(chunk, false);
                    at += n;
                    continue;
                }
                Some(i) => {
                    sink.records(&chunk[..i * RECORD_SIZE], false);
                    let slot = at + i as u64;
                    let rec = &chunk[i * RECORD_SIZE..(i + 1) * RECORD_SIZE];
                    let what = if rec.iter().all(|&b| b == 0) {
                        "is all zero"
                    } else {
                        "fails its CRC-32C check"
                    };
                    scan.damage = Some(Damage {
                        offset: HDR + slot * REC,
                        why: format!("record {slot} (below committed={declared}) {what}"),
                    });
                    bad = Some(slot);
                    if opts.salvage {
                        salvage_chunk(&mut scan.salvaged_slots, sink, chunk, at, slot + 1);
                    }
                }
            }
        } else {
            salvage_chunk(&mut scan.salvaged_slots, sink, chunk, at, at);
        }
        at += n;
    }
    scan.n_valid = bad.unwrap_or(committed) as usize;
    if bad.is_none() {
        if declared > available {
            scan.damage = Some(Damage {
                offset: HDR + available * REC,
                why: format!(
                    "file truncated: committed={declared} records but the file holds only \
                     {available} ({file_len} bytes)"
                ),
            });
        } else if !closed {
            walk_tail(&mut scan, sink, &mut rd, committed, limit, opts.salvage)?;
        }
    }
    if opts.check_slack {
        if closed && committed < limit {
            let mut at = committed;
            let mut first: Option<u64> = None;
            let (mut nonzero, mut valid) = (0u64, 0u64);
            while at < limit {
                // what the filesystem reports as a hole or unwritten reads as zeros: skip it
                match rd.next_data(HDR + at * REC) {
                    None => break,
                    Some(p) => at = at.max((p - HDR) / REC),
                }
                if at >= limit {
                    break;
                }
                let n = (limit - at).min(CHUNK);
                let chunk = rd.read(at, n)?;
                if chunk.iter().all(|&b| b == 0) {
                    at += n;
                    continue;
                }
                for (i, r) in chunk.chunks_exact(RECORD_SIZE).enumerate() {
                    if r.iter().any(|&b| b != 0) {
                        nonzero += 1;
                        valid += u64::from(record_ok(r));
                        first.get_or_insert(HDR + (at + i as u64) * REC);
                    }
                }
                at += n;
            }
            scan.after_committed = first.map(|o| (o, nonzero, valid));
        }
        let end = HDR + capacity.saturating_mul(REC);
        if file_len > end {
            scan.past_capacity = Some((end, file_len - end));
        }
    }
    Ok(scan)
}

/// One reused buffer of [`CHUNK`] records and the file it reads.
struct Chunks<'a> {
    file: File,
    path: &'a Path,
    buf: Vec<u8>,
}

impl Chunks<'_> {
    /// The first offset `>= from` that may hold data (`lseek(SEEK_DATA)`): None when the
    /// rest of the file is a hole or unwritten (zeros); `Some(from)` when the filesystem
    /// cannot tell.
    fn next_data(&self, from: u64) -> Option<u64> {
        use std::os::fd::AsRawFd;
        let Ok(off) = libc::off_t::try_from(from) else {
            return Some(from);
        };
        // SAFETY: plain syscall on an fd we own; it only moves that fd's offset, which the
        // positioned reads (`pread`) of this reader never use.
        let pos = unsafe { libc::lseek(self.file.as_raw_fd(), off, libc::SEEK_DATA) };
        if pos >= 0 {
            return Some((pos as u64).max(from));
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::ENXIO) => None,
            _ => Some(from),
        }
    }

    /// Records `[from, from + count)` (`count <= CHUNK`).
    fn read(&mut self, from: u64, count: u64) -> Result<&[u8], ReadError> {
        let b = &mut self.buf[..(count * REC) as usize];
        self.file
            .read_exact_at(b, HDR + from * REC)
            .map_err(|source| ReadError::Io {
                path: self.path.to_path_buf(),
                source,
            })?;
        Ok(b)
    }
}

/// Salvage mode: the intact records of `chunk` (first slot `at`) from slot `from` on.
fn salvage_chunk(
    slots: &mut Vec<u64>,
    sink: &mut dyn RecordSink,
    chunk: &[u8],
    at: u64,
    from: u64,
) {
    let skip = (from - at) as usize;
    for (i, r) in chunk.chunks_exact(RECORD_SIZE).enumerate().skip(skip) {
        if record_ok(r) {
            sink.records(r, true);
            slots.push(at + i as u64);
        }
    }
}

/// Reads past `committed` of an open segment: records while valid; the first bad non-zero
/// one is torn. With `salvage`, valid records after a torn one are kept (up to a zero slot).
fn walk_tail(
    scan: &mut Scan,
    sink: &mut dyn RecordSink,
    rd: &mut Chunks<'_>,
    from: u64,
    limit: u64,
    salvage: bool,
) -> Result<(), ReadError> {
    let mut at = from;
    let mut chunk_len = 256u64;
    let mut torn = false;
    while at < limit {
        let n = (limit - at).min(chunk_len);
        let chunk = rd.read(at, n)?;
        for (i, r) in chunk.chunks_exact(RECORD_SIZE).enumerate() {
            let slot = at + i as u64;
            if r.iter().all(|&b| b == 0) {
                return Ok(());
            }
            if record_ok(r) {
                sink.records(r, torn);
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
        chunk_len = (chunk_len * 2).min(CHUNK);
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
