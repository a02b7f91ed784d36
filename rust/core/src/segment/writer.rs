//! The records of a segment: [`PreparedSegment`] (allocated ahead as `*.seg.next`, then
//! given its header and final name) and [`SegmentWriter`] (stages records and writes them
//! with `pwrite`, publishes `committed`, starts writeback).
use super::{allocate, next_name, off, segment_name, segment_path, LogDir};
use super::{FLAG_KEYED, HEADER_SIZE, MAGIC, STAGE_RECORDS, VERSION};
use crate::chain::ChainHead;
use crate::record::RECORD_SIZE;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The host name, for the header.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its whole length, which is what we pass.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// A segment file allocated ahead of use (named `*.seg.next` until activated).
pub struct PreparedSegment {
    dir: Arc<LogDir>,
    index: u64,
    file: File,
    capacity: u64,
}

impl PreparedSegment {
    /// Creates and allocates the file for segment `index` with room for `capacity` records.
    /// Fails cleanly on a full disk.
    pub fn create(dir: &Path, index: u64, capacity: u64) -> io::Result<PreparedSegment> {
        PreparedSegment::create_in(&Arc::new(LogDir::open_unchecked(dir)?), index, capacity)
    }

    /// As [`PreparedSegment::create`], in an opened [`LogDir`]: `O_EXCL|O_NOFOLLOW`, so a
    /// symlink planted as `NNN.seg.next` is removed (never followed) and the file is new.
    pub fn create_in(dir: &Arc<LogDir>, index: u64, capacity: u64) -> io::Result<PreparedSegment> {
        let name = next_name(index);
        let file = dir.replace(&name)?;
        let len = HEADER_SIZE as u64 + capacity * RECORD_SIZE as u64;
        if let Err(e) = allocate(&file, len) {
            drop(file);
            let _ = dir.unlink(&name);
            return Err(e);
        }
        Ok(PreparedSegment {
            dir: Arc::clone(dir),
            index,
            file,
            capacity,
        })
    }

    /// Removes the prepared file (a failed open, or shutdown before it was needed).
    pub fn discard(self) {
        let _ = self.dir.unlink(&next_name(self.index));
    }

    /// Index this segment will have.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Writes the header and renames the file to its final `*.seg` name.
    pub fn activate(
        self,
        first_seq: u64,
        seq_reserved: u64,
        prev: &ChainHead,
        key: Option<&[u8]>,
    ) -> io::Result<SegmentWriter> {
        let mut h = vec![0u8; HEADER_SIZE];
        h[off::MAGIC..off::MAGIC + 8].copy_from_slice(MAGIC);
        h[off::VERSION..off::VERSION + 2].copy_from_slice(&VERSION.to_le_bytes());
        h[off::RECORD_SIZE..off::RECORD_SIZE + 2]
            .copy_from_slice(&(RECORD_SIZE as u16).to_le_bytes());
        h[off::HEADER_SIZE..off::HEADER_SIZE + 4]
            .copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        h[off::SEGMENT_INDEX..off::SEGMENT_INDEX + 8].copy_from_slice(&self.index.to_le_bytes());
        h[off::FIRST_SEQ..off::FIRST_SEQ + 8].copy_from_slice(&first_seq.to_le_bytes());
        h[off::CREATED_WALL_NS..off::CREATED_WALL_NS + 8]
            .copy_from_slice(&crate::clock::realtime_ns().to_le_bytes());
        h[off::PID..off::PID + 4].copy_from_slice(&std::process::id().to_le_bytes());
        let flags = if key.is_some() { FLAG_KEYED } else { 0 };
        h[off::FLAGS..off::FLAGS + 4].copy_from_slice(&flags.to_le_bytes());
        h[off::CAPACITY..off::CAPACITY + 8].copy_from_slice(&self.capacity.to_le_bytes());
        h[off::PREV_CHAIN..off::PREV_CHAIN + 32].copy_from_slice(prev);
        h[off::SEQ_RESERVED..off::SEQ_RESERVED + 8].copy_from_slice(&seq_reserved.to_le_bytes());
        let host = host_name();
        let n = host.len().min(off::HOST_LEN);
        h[off::HOST..off::HOST + n].copy_from_slice(&host.as_bytes()[..n]);
        let written = self.file.write_all_at(&h, 0).and_then(|()| {
            self.dir
                .rename(&next_name(self.index), &segment_name(self.index))
        });
        if let Err(e) = written {
            let _ = self.dir.unlink(&next_name(self.index));
            return Err(e);
        }
        let final_path = segment_path(self.dir.path(), self.index);
        Ok(SegmentWriter {
            path: final_path,
            file: self.file,
            index: self.index,
            capacity: self.capacity,
            written: 0,
            committed: 0,
            staged: Vec::with_capacity(STAGE_RECORDS * RECORD_SIZE),
            staged_from: 0,
            writeback_from: 0,
        })
    }
}

/// The segment being written. Owned by the flusher thread.
///
/// Records are encoded into a private buffer and written with `pwrite`, never through a
/// shared writable mapping of the file: when the kernel writes back a page that a process
/// has mapped writable, it write-protects it again (`page_mkclean`), a TLB shootdown that
/// interrupts *every* CPU running a thread of the process, the trading thread's included
/// (~5.7 µs each on the KVM guest of BENCHMARKS.md). With `pwrite` the process has no
/// writable mapping of the segment and writeback interrupts nobody.
pub struct SegmentWriter {
    path: PathBuf,
    file: File,
    index: u64,
    capacity: u64,
    /// Records appended (staged or in the file).
    written: u64,
    /// Records published in the header (`committed <= written`).
    committed: u64,
    /// Encoded records not yet written, starting at record `staged_from`.
    staged: Vec<u8>,
    staged_from: u64,
    /// First byte not yet handed to writeback.
    writeback_from: u64,
}

impl SegmentWriter {
    /// Path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Segment index.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Record slots still free.
    pub fn remaining(&self) -> u64 {
        self.capacity - self.written
    }

    /// Total record slots.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// How many records [`SegmentWriter::append`] takes now: the free slots, bounded by the
    /// staging buffer (written out first when full; 0 while the disk refuses the write).
    pub fn accepts(&mut self) -> u64 {
        if self.staged.len() == STAGE_RECORDS * RECORD_SIZE && self.write_staged().is_err() {
            return 0;
        }
        let stage_free = (STAGE_RECORDS * RECORD_SIZE - self.staged.len()) / RECORD_SIZE;
        self.remaining().min(stage_free as u64)
    }

    /// Stages one encoded record; `false` (nothing stored) when the segment is full or the
    /// staging buffer is full and cannot be written out.
    #[inline]
    pub fn append(&mut self, record: &[u8; RECORD_SIZE]) -> bool {
        if self.written == self.capacity || self.accepts() == 0 {
            return false;
        }
        self.staged.extend_from_slice(record);
        self.written += 1;
        true
    }

    fn write_staged(&mut self) -> io::Result<()> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let at = HEADER_SIZE as u64 + self.staged_from * RECORD_SIZE as u64;
        self.file.write_all_at(&self.staged, at)?;
        self.staged_from += (self.staged.len() / RECORD_SIZE) as u64;
        self.staged.clear();
        Ok(())
    }

    /// Writes the staged records, then publishes them: `committed` is written after the
    /// records, so a reader that sees a count finds complete records (one page cache, in
    /// program order). On an error nothing is published and the records stay staged.
    pub fn commit(&mut self) -> io::Result<()> {
        self.write_staged()?;
        if self.committed < self.written {
            self.file
                .write_all_at(&self.written.to_le_bytes(), off::COMMITTED as u64)?;
            self.committed = self.written;
        }
        Ok(())
    }

    /// Starts asynchronous writeback of what was committed since the last call
    /// (`sync_file_range(WRITE)`), so dirty pages never pile up into a long stall.
    pub fn start_writeback(&mut self) {
        let to = HEADER_SIZE as u64 + self.committed * RECORD_SIZE as u64;
        if to <= self.writeback_from {
            return;
        }
        // SAFETY: plain syscall on our fd with an in-bounds range; no memory is passed.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                self.writeback_from as libc::off64_t,
                (to - self.writeback_from) as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        self.writeback_from = to;
    }

    /// Raises the header's `seq_reserved` mark (docs/FORMAT.md) to `mark`.
    pub fn write_seq_reserved(&self, mark: u64) -> io::Result<()> {
        self.file
            .write_all_at(&mark.to_le_bytes(), off::SEQ_RESERVED as u64)
    }

    /// Records appended so far (staged or in the file).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// `fdatasync` of the file, by the writer itself (the direct engine).
    pub fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// A second handle on the file, for a thread that makes it durable (`fdatasync`) while
    /// this one keeps writing.
    pub fn sync_handle(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// Publishes the last records. Sealing (final chain, CLOSED flag) is the
    /// [`ChainWriter`](super::ChainWriter)'s; durability is the syncer's (hand it
    /// [`SegmentWriter::sync_handle`]).
    pub fn finish(mut self) -> io::Result<()> {
        self.commit()
    }
}
