//! [`ChainWriter`]: the hash chain of the segment being written, kept on its own thread
//! from records read back with `pread`; it owns `chain_records`, `chain_head` and CLOSED.
use super::{off, FLAG_CLOSED, HEADER_SIZE, STAGE_RECORDS};
use crate::chain::{Chain, ChainHead};
use crate::record::RECORD_SIZE;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Keeps the hash chain of the segment being written, on another thread than the flusher:
/// hashing (SHA-256: ~40 ns a record) costs as much as everything else the flusher does. It
/// reads committed records with `pread` (they never change again, so this races with
/// nothing) and owns the header fields `chain_records`, `chain_head` and the CLOSED flag;
/// the [`SegmentWriter`](super::SegmentWriter) owns the records and `committed`.
pub struct ChainWriter {
    file: File,
    index: u64,
    capacity: u64,
    chain: Chain,
    /// Records hashed and published in `chain_records`.
    done: u64,
    buf: Vec<u8>,
}

impl ChainWriter {
    /// Opens segment `path` (already activated, header written) and starts its chain after
    /// `prev`.
    pub fn open(path: &Path, prev: &ChainHead, key: Option<&[u8]>) -> io::Result<ChainWriter> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        ChainWriter::from_file(file, prev, key)
    }

    /// As [`ChainWriter::open`], on a handle of the segment (no path lookup).
    pub fn from_file(file: File, prev: &ChainHead, key: Option<&[u8]>) -> io::Result<ChainWriter> {
        let len = file.metadata()?.len();
        if len < HEADER_SIZE as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "segment shorter than its header",
            ));
        }
        let mut index = [0u8; 8];
        file.read_exact_at(&mut index, off::SEGMENT_INDEX as u64)?;
        let index = u64::from_le_bytes(index);
        let mut w = ChainWriter {
            file,
            index,
            capacity: (len - HEADER_SIZE as u64) / RECORD_SIZE as u64,
            chain: Chain::start(key, prev, index),
            done: 0,
            buf: Vec::with_capacity(STAGE_RECORDS * RECORD_SIZE),
        };
        w.publish()?;
        Ok(w)
    }

    /// (segment index, records covered by the published `chain_head`).
    pub fn progress(&self) -> (u64, u64) {
        (self.index, self.done)
    }

    fn committed(&self) -> io::Result<u64> {
        let mut word = [0u8; 8];
        self.file.read_exact_at(&mut word, off::COMMITTED as u64)?;
        Ok(u64::from_le_bytes(word).min(self.capacity))
    }

    /// `chain_records` and `chain_head` are adjacent (offsets 64..104): one write.
    fn publish(&mut self) -> io::Result<()> {
        let mut fields = [0u8; 40];
        fields[..8].copy_from_slice(&self.done.to_le_bytes());
        fields[8..].copy_from_slice(&self.chain.head());
        self.file.write_all_at(&fields, off::CHAIN_RECORDS as u64)
    }

    /// Hashes the records committed since the last call and publishes the chain head.
    /// Returns how many records it hashed (0 on an I/O error: retried at the next call).
    pub fn catch_up(&mut self) -> u64 {
        let Ok(committed) = self.committed() else {
            return 0;
        };
        let start = self.done;
        while self.done < committed {
            let n = (committed - self.done).min(STAGE_RECORDS as u64);
            self.buf.resize(n as usize * RECORD_SIZE, 0);
            let at = HEADER_SIZE as u64 + self.done * RECORD_SIZE as u64;
            if self.file.read_exact_at(&mut self.buf, at).is_err() {
                break;
            }
            self.chain.update(&self.buf);
            self.done += n;
        }
        if self.done > start && self.publish().is_err() {
            return 0;
        }
        self.done - start
    }

    /// After the writer's last commit: hashes the rest, sets CLOSED, returns the final chain.
    pub fn seal(mut self) -> io::Result<ChainHead> {
        self.catch_up();
        if self.done < self.committed()? {
            return Err(io::Error::other("could not hash every committed record"));
        }
        let mut flags = [0u8; 4];
        self.file.read_exact_at(&mut flags, off::FLAGS as u64)?;
        let flags = u32::from_le_bytes(flags) | FLAG_CLOSED;
        self.file
            .write_all_at(&flags.to_le_bytes(), off::FLAGS as u64)?;
        Ok(self.chain.head())
    }
}
