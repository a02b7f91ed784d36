//! Reads segment files back: used by recovery (where does the log end, what is the chain),
//! by tests and by the benchmarks. The full-featured reader and `verify` for users live in
//! the Python package and follow the same rules (docs/FORMAT.md).
use crate::chain::ChainHead;
use crate::record::{Record, RECORD_SIZE};
use crate::segment::{off, FLAG_CLOSED, HEADER_SIZE, MAGIC, VERSION};
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

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
}

impl SegmentHeader {
    /// True once the writer sealed the segment.
    pub fn is_closed(&self) -> bool {
        self.flags & FLAG_CLOSED != 0
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

/// Parses a header, checking magic, version and sizes.
pub fn parse_header(
    path: &Path,
    h: &[u8; HEADER_SIZE],
    file_len: u64,
) -> Result<SegmentHeader, ReadError> {
    let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().expect("8"));
    let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().expect("4"));
    let u16_at = |o: usize| u16::from_le_bytes(h[o..o + 2].try_into().expect("2"));
    if &h[..8] != MAGIC {
        return Err(corrupt(
            path,
            0,
            "bad magic: not a killswitch-audit segment",
        ));
    }
    if u16_at(off::VERSION) != VERSION {
        return Err(corrupt(
            path,
            off::VERSION as u64,
            format!("unsupported version {}", u16_at(off::VERSION)),
        ));
    }
    if u16_at(off::RECORD_SIZE) as usize != RECORD_SIZE
        || u32_at(off::HEADER_SIZE) as usize != HEADER_SIZE
    {
        return Err(corrupt(
            path,
            off::RECORD_SIZE as u64,
            "unexpected record or header size",
        ));
    }
    let capacity = u64_at(off::CAPACITY);
    let max_records = file_len.saturating_sub(HEADER_SIZE as u64) / RECORD_SIZE as u64;
    let committed = u64_at(off::COMMITTED);
    if committed > capacity || committed > max_records {
        return Err(corrupt(
            path,
            off::COMMITTED as u64,
            format!("committed {committed} exceeds the file ({max_records} records)"),
        ));
    }
    let host_bytes = &h[off::HOST..off::HOST + off::HOST_LEN];
    let host_end = host_bytes
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(off::HOST_LEN);
    Ok(SegmentHeader {
        segment_index: u64_at(off::SEGMENT_INDEX),
        first_seq: u64_at(off::FIRST_SEQ),
        created_wall_ns: u64_at(off::CREATED_WALL_NS),
        pid: u32_at(off::PID),
        flags: u32_at(off::FLAGS),
        capacity,
        committed,
        chain_records: u64_at(off::CHAIN_RECORDS),
        chain_head: h[off::CHAIN_HEAD..off::CHAIN_HEAD + 32]
            .try_into()
            .expect("32"),
        prev_chain: h[off::PREV_CHAIN..off::PREV_CHAIN + 32]
            .try_into()
            .expect("32"),
        host: String::from_utf8_lossy(&host_bytes[..host_end]).into_owned(),
    })
}

/// Reads one segment: every committed record must be valid (else `Corrupt`); after them,
/// records are read while valid (open segments only); a torn one is reported, not returned.
pub fn read_segment(path: &Path) -> Result<SegmentContents, ReadError> {
    let io_err = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let file_len = file.metadata().map_err(io_err)?.len();
    if file_len < HEADER_SIZE as u64 {
        return Err(corrupt(
            path,
            file_len,
            "file shorter than a segment header",
        ));
    }
    let mut h = [0u8; HEADER_SIZE];
    file.read_exact(&mut h).map_err(io_err)?;
    let header = parse_header(path, &h, file_len)?;
    let limit = header
        .capacity
        .min((file_len - HEADER_SIZE as u64) / RECORD_SIZE as u64);
    let mut reader = io::BufReader::with_capacity(1 << 20, file);
    let mut records = Vec::with_capacity(header.committed as usize);
    let mut torn_at = None;
    let mut buf = [0u8; RECORD_SIZE];
    for i in 0..limit {
        if header.is_closed() && i >= header.committed {
            break;
        }
        reader.read_exact(&mut buf).map_err(io_err)?;
        let offset = HEADER_SIZE as u64 + i * RECORD_SIZE as u64;
        if Record::crc_ok(&buf) && buf.iter().any(|&b| b != 0) {
            records.push(Record::from_bytes(&buf));
            continue;
        }
        if i < header.committed {
            return Err(corrupt(
                path,
                offset,
                "checksum mismatch in a committed record",
            ));
        }
        if buf.iter().any(|&b| b != 0) {
            torn_at = Some(offset);
        }
        break;
    }
    Ok(SegmentContents {
        header,
        records,
        torn_at,
    })
}

/// The segment files of a directory, sorted by index (`*.seg` only).
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".seg") else {
            continue;
        };
        if let Ok(index) = stem.parse::<u64>() {
            out.push((index, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Every valid record of a directory (or one segment file), in file order.
pub fn read_all(path: &Path) -> Result<Vec<Record>, ReadError> {
    if path.is_file() {
        return Ok(read_segment(path)?.records);
    }
    let segments = list_segments(path).map_err(|source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (_, seg) in segments {
        out.extend(read_segment(&seg)?.records);
    }
    Ok(out)
}
