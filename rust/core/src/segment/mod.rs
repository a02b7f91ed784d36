//! Segment files: a 4096-byte header and fixed 64-byte records in a fully allocated file
//! (layout in docs/FORMAT.md), written with `pwrite` (see [`SegmentWriter`] for why not
//! through a memory mapping).
//!
//! Space is reserved with `fallocate`, never a sparse `set_len`, so a full disk is an error
//! at [`PreparedSegment::create`], not a failed write later.
//!
//! # Files
//!
//! This file: the header layout ([`off`], flags) and its accessors, and segment names.
//! `dir` ([`LogDir`]: every file of the log created relative to one directory descriptor),
//! `space` (reserving and releasing disk blocks), `writer` ([`PreparedSegment`],
//! [`SegmentWriter`]: the records), `chain_writer` ([`ChainWriter`]: the hash chain of the
//! segment being written), `recovery` (checking and sealing what a crashed writer left).
use crate::chain::ChainHead;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

mod chain_writer;
mod dir;
mod recovery;
mod space;
mod writer;

pub use chain_writer::ChainWriter;
pub use dir::{DirError, LogDir, DEFAULT_DIR_MODE, DEFAULT_FILE_MODE};
pub use recovery::{remove_stale_prepared, seal_after_crash, writer_chain_verifies, SealReport};
pub use space::{allocate, release_unused_tail};
pub use writer::{host_name, PreparedSegment, SegmentWriter};

/// Header size; records start here.
pub const HEADER_SIZE: usize = 4096;
/// File magic.
pub const MAGIC: &[u8; 8] = b"KSAUDIT1";
/// Format version.
pub const VERSION: u16 = 1;
/// Header flag: the segment is closed.
pub const FLAG_CLOSED: u32 = 1;
/// Header flag: the chain is HMAC-SHA256.
pub const FLAG_KEYED: u32 = 2;
/// Header flag: the segment was sealed by recovery after its writer died.
pub const FLAG_RECOVERED: u32 = 4;

/// Header byte offsets.
#[allow(missing_docs)]
pub mod off {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const RECORD_SIZE: usize = 10;
    pub const HEADER_SIZE: usize = 12;
    pub const SEGMENT_INDEX: usize = 16;
    pub const FIRST_SEQ: usize = 24;
    pub const CREATED_WALL_NS: usize = 32;
    pub const PID: usize = 40;
    pub const FLAGS: usize = 44;
    pub const CAPACITY: usize = 48;
    pub const COMMITTED: usize = 56;
    pub const CHAIN_RECORDS: usize = 64;
    pub const CHAIN_HEAD: usize = 72;
    pub const PREV_CHAIN: usize = 104;
    pub const HOST: usize = 136;
    pub const HOST_LEN: usize = 64;
    pub const WRITER_CHAINED: usize = 208;
    pub const SEQ_RESERVED: usize = 216;
}

/// Little-endian u64 of a header at byte offset `o`.
pub fn header_u64(h: &[u8; HEADER_SIZE], o: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&h[o..o + 8]);
    u64::from_le_bytes(word)
}

/// Little-endian u32 of a header at byte offset `o`.
pub fn header_u32(h: &[u8; HEADER_SIZE], o: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&h[o..o + 4]);
    u32::from_le_bytes(word)
}

/// The 32 bytes of a header at byte offset `o` (chain values).
pub fn header_chain(h: &[u8; HEADER_SIZE], o: usize) -> ChainHead {
    let mut v = [0u8; 32];
    v.copy_from_slice(&h[o..o + 32]);
    v
}

/// Reads the 4096-byte header of an open segment file.
pub fn read_header(file: &File) -> io::Result<Box<[u8; HEADER_SIZE]>> {
    let mut h = Box::new([0u8; HEADER_SIZE]);
    file.read_exact_at(&mut h[..], 0)?;
    Ok(h)
}

/// File name of segment `index` in `dir`.
pub fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:012}.seg"))
}

fn segment_name(index: u64) -> String {
    format!("{index:012}.seg")
}

fn next_name(index: u64) -> String {
    format!("{index:012}.seg.next")
}

/// Records buffered by the writer before one `pwrite` (256 KiB).
pub const STAGE_RECORDS: usize = 4096;
