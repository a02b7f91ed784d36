//! Segment files: a 4096-byte header and fixed 64-byte records in a fully allocated file
//! (layout in docs/FORMAT.md), written with `pwrite` (see [`SegmentWriter`] for why not
//! through a memory mapping).
//!
//! Space is reserved with `fallocate`, never a sparse `set_len`, so a full disk is an error
//! at [`PreparedSegment::create`], not a failed write later.
use crate::chain::{Chain, ChainHead};
use crate::record::RECORD_SIZE;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

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
}

/// File name of segment `index` in `dir`.
pub fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:012}.seg"))
}

fn next_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:012}.seg.next"))
}

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

/// Reserves `len` bytes for `file` (posix_fallocate): a full disk fails here, not later.
pub fn allocate(file: &File, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on an fd we own; no memory is passed.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// A segment file allocated ahead of use (named `*.seg.next` until activated).
pub struct PreparedSegment {
    dir: PathBuf,
    index: u64,
    file: File,
    capacity: u64,
}

impl PreparedSegment {
    /// Creates and allocates the file for segment `index` with room for `capacity` records.
    /// Fails cleanly on a full disk.
    pub fn create(dir: &Path, index: u64, capacity: u64) -> io::Result<PreparedSegment> {
        let path = next_path(dir, index);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        let len = HEADER_SIZE as u64 + capacity * RECORD_SIZE as u64;
        if let Err(e) = allocate(&file, len) {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(PreparedSegment {
            dir: dir.to_path_buf(),
            index,
            file,
            capacity,
        })
    }

    /// Index this segment will have.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Writes the header and renames the file to its final `*.seg` name.
    pub fn activate(
        self,
        first_seq: u64,
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
        let host = host_name();
        let n = host.len().min(off::HOST_LEN);
        h[off::HOST..off::HOST + n].copy_from_slice(&host.as_bytes()[..n]);
        self.file.write_all_at(&h, 0)?;
        let final_path = segment_path(&self.dir, self.index);
        std::fs::rename(next_path(&self.dir, self.index), &final_path)?;
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

/// Records buffered by the writer before one `pwrite` (256 KiB).
pub const STAGE_RECORDS: usize = 4096;

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

    /// A second handle on the file, for a thread that makes it durable (`fdatasync`) while
    /// this one keeps writing.
    pub fn sync_handle(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// Publishes the last records. Sealing (final chain, CLOSED flag) is the
    /// [`ChainWriter`]'s; durability is the syncer's (hand it [`SegmentWriter::sync_handle`]).
    pub fn finish(mut self) -> io::Result<()> {
        self.commit()
    }
}

/// Keeps the hash chain of the segment being written, on another thread than the flusher:
/// hashing (SHA-256: ~40 ns a record) costs as much as everything else the flusher does. It
/// reads committed records with `pread` (they never change again, so this races with
/// nothing) and owns the header fields `chain_records`, `chain_head` and the CLOSED flag;
/// the [`SegmentWriter`] owns the records and `committed`.
pub struct ChainWriter {
    file: File,
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
        let len = file.metadata()?.len();
        if len < HEADER_SIZE as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "segment shorter than its header",
            ));
        }
        let mut index = [0u8; 8];
        file.read_exact_at(&mut index, off::SEGMENT_INDEX as u64)?;
        let mut w = ChainWriter {
            file,
            capacity: (len - HEADER_SIZE as u64) / RECORD_SIZE as u64,
            chain: Chain::start(key, prev, u64::from_le_bytes(index)),
            done: 0,
            buf: Vec::with_capacity(STAGE_RECORDS * RECORD_SIZE),
        };
        w.publish()?;
        Ok(w)
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

/// Removes stale `*.seg.next` files left by a crash.
pub fn remove_stale_prepared(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.to_string_lossy().ends_with(".seg.next") {
            std::fs::remove_file(path)?;
        }
    }
    Ok(())
}

/// Seals a segment left open by a crash: `committed` and the chain cover exactly the
/// `valid` records a reader found, and the CLOSED flag is set. Returns the final chain.
pub fn seal_after_crash(path: &Path, valid: u64, key: Option<&[u8]>) -> io::Result<ChainHead> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    let needed = HEADER_SIZE as u64 + valid * RECORD_SIZE as u64;
    if len < needed {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: shorter than its records", path.display()),
        ));
    }
    let mut header = [0u8; HEADER_SIZE];
    file.read_exact_at(&mut header, 0)?;
    let index = u64::from_le_bytes(
        header[off::SEGMENT_INDEX..off::SEGMENT_INDEX + 8]
            .try_into()
            .expect("8"),
    );
    let prev: ChainHead = header[off::PREV_CHAIN..off::PREV_CHAIN + 32]
        .try_into()
        .expect("32");
    let mut chain = Chain::start(key, &prev, index);
    let mut buf = vec![0u8; STAGE_RECORDS * RECORD_SIZE];
    let mut at = HEADER_SIZE as u64;
    while at < needed {
        let n = ((needed - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], at)?;
        chain.update(&buf[..n]);
        at += n as u64;
    }
    let head = chain.head();
    let flags = u32::from_le_bytes(header[off::FLAGS..off::FLAGS + 4].try_into().expect("4"))
        | FLAG_CLOSED
        | FLAG_RECOVERED;
    file.write_all_at(&flags.to_le_bytes(), off::FLAGS as u64)?;
    file.write_all_at(&valid.to_le_bytes(), off::COMMITTED as u64)?;
    let mut chain_fields = [0u8; 40];
    chain_fields[..8].copy_from_slice(&valid.to_le_bytes());
    chain_fields[8..].copy_from_slice(&head);
    file.write_all_at(&chain_fields, off::CHAIN_RECORDS as u64)?;
    file.sync_data()?;
    Ok(head)
}
