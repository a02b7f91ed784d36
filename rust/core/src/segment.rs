//! Segment files: a 4096-byte header and fixed 64-byte records in a fully allocated,
//! memory-mapped file (layout in docs/FORMAT.md).
//!
//! Space is reserved with `fallocate`, never a sparse `set_len`, so a full disk is an error
//! at [`PreparedSegment::create`] and never a SIGBUS on a later write through the mapping.
use crate::chain::{Chain, ChainHead};
use crate::record::RECORD_SIZE;
use memmap2::{MmapMut, MmapOptions};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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

/// A segment file allocated and mapped ahead of use (named `*.seg.next` until activated).
pub struct PreparedSegment {
    dir: PathBuf,
    index: u64,
    file: File,
    map: MmapMut,
    capacity: u64,
}

impl PreparedSegment {
    /// Creates, allocates and maps the file for segment `index` with room for `capacity`
    /// records, pre-faulting the mapping (MAP_POPULATE). Fails cleanly on a full disk.
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
        // SAFETY: the file was just created by this process and its whole length is allocated
        // (so no SIGBUS); other processes only ever read it, and nothing truncates it while
        // mapped: the writer owns it until it is closed.
        let mut map = unsafe {
            MmapOptions::new()
                .len(len as usize)
                .populate()
                .map_mut(&file)
        }?;
        // MAP_POPULATE maps a shared file read-only; the first write to each page would still
        // fault (page_mkwrite, ~3 µs) on the flusher. Touch every page for writing here, on the
        // preparing thread, so the flusher's copies run at memory speed.
        for page in (0..map.len()).step_by(4096) {
            map[page] = 0;
        }
        Ok(PreparedSegment {
            dir: dir.to_path_buf(),
            index,
            file,
            map,
            capacity,
        })
    }

    /// Index this segment will have.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Writes the header and renames the file to its final `*.seg` name.
    pub fn activate(
        mut self,
        first_seq: u64,
        prev: &ChainHead,
        key: Option<&[u8]>,
    ) -> io::Result<SegmentWriter> {
        let h = &mut self.map[..HEADER_SIZE];
        h.fill(0);
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
        let final_path = segment_path(&self.dir, self.index);
        std::fs::rename(next_path(&self.dir, self.index), &final_path)?;
        let w = SegmentWriter {
            path: final_path,
            file: self.file,
            map: self.map,
            index: self.index,
            capacity: self.capacity,
            written: 0,
            committed: 0,
            writeback_from: 0,
        };
        w.header_u64(off::COMMITTED).store(0, Ordering::Release);
        Ok(w)
    }
}

/// The segment being written. Owned by the flusher thread.
pub struct SegmentWriter {
    path: PathBuf,
    file: File,
    map: MmapMut,
    index: u64,
    capacity: u64,
    /// Records copied into the mapping.
    written: u64,
    /// Records published in the header (`committed <= written`).
    committed: u64,
    /// First byte not yet handed to writeback.
    writeback_from: usize,
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

    /// Records copied in so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Copies one encoded record in; `false` when the segment is full.
    #[inline]
    pub fn append(&mut self, record: &[u8; RECORD_SIZE]) -> bool {
        if self.written == self.capacity {
            return false;
        }
        let at = HEADER_SIZE + self.written as usize * RECORD_SIZE;
        self.map[at..at + RECORD_SIZE].copy_from_slice(record);
        self.written += 1;
        true
    }

    fn header_u64(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset % 8 == 0 && offset + 8 <= HEADER_SIZE);
        // SAFETY: the mapping is page aligned and at least HEADER_SIZE long, `offset` is a
        // multiple of 8 inside the header, and the returned reference borrows `self`, so the
        // mapping outlives it. Only this writer stores to these words.
        unsafe { &*(self.map.as_ptr().add(offset) as *const AtomicU64) }
    }

    /// Publishes the records copied so far: a Release store of the committed count, so a
    /// reader (or the [`ChainWriter`]) that sees the count sees complete records.
    pub fn commit(&mut self) {
        if self.committed < self.written {
            self.committed = self.written;
            self.header_u64(off::COMMITTED)
                .store(self.written, Ordering::Release);
        }
    }

    /// Starts asynchronous writeback of what was committed since the last call
    /// (`sync_file_range(WRITE)`), so dirty pages never pile up into a long stall.
    pub fn start_writeback(&mut self) {
        let to = HEADER_SIZE + self.committed as usize * RECORD_SIZE;
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

    /// Makes every committed record and the header durable now (blocking; used at shutdown).
    pub fn sync(&mut self) -> io::Result<()> {
        self.map.flush()
    }

    /// Publishes the last records. Sealing (final chain, CLOSED flag) is the
    /// [`ChainWriter`]'s; durability is the syncer's (hand it [`SegmentWriter::sync_handle`]).
    pub fn finish(mut self) {
        self.commit();
    }
}

/// Keeps the hash chain of the segment being written, from its own mapping of the file, so
/// that hashing (SHA-256: ~36 ns a record, as much as everything else the flusher does) runs
/// on another thread than the flusher. It owns the header fields `chain_head`,
/// `chain_records` and the CLOSED flag; the [`SegmentWriter`] owns the records and
/// `committed`. Records below `committed` never change again, so reading them here races
/// with nothing.
pub struct ChainWriter {
    map: MmapMut,
    chain: Chain,
    /// Records hashed and published in `chain_records`.
    done: u64,
}

impl ChainWriter {
    /// Maps segment `path` (already activated, header written) and starts its chain after
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
        // SAFETY: the file is a fully allocated segment of this process's logger (no SIGBUS);
        // the writer only appends records and stores `committed`, this mapping only writes the
        // chain fields and the flags, and nothing truncates the file while either is mapped.
        let map = unsafe { MmapOptions::new().len(len as usize).map_mut(&file) }?;
        let index = u64::from_le_bytes(
            map[off::SEGMENT_INDEX..off::SEGMENT_INDEX + 8]
                .try_into()
                .expect("8 bytes"),
        );
        let mut w = ChainWriter {
            map,
            chain: Chain::start(key, prev, index),
            done: 0,
        };
        w.publish();
        Ok(w)
    }

    fn committed(&self) -> u64 {
        // SAFETY: the mapping is page aligned and longer than the header; COMMITTED is a
        // multiple of 8; the reference borrows `self`, so the mapping outlives it.
        let word = unsafe { &*(self.map.as_ptr().add(off::COMMITTED) as *const AtomicU64) };
        let capacity = (self.map.len() - HEADER_SIZE) as u64 / RECORD_SIZE as u64;
        word.load(Ordering::Acquire).min(capacity)
    }

    fn publish(&mut self) {
        let head = self.chain.head();
        self.map[off::CHAIN_HEAD..off::CHAIN_HEAD + 32].copy_from_slice(&head);
        // SAFETY: as in `committed`, for the CHAIN_RECORDS word, which only this writer stores.
        let word = unsafe { &*(self.map.as_ptr().add(off::CHAIN_RECORDS) as *const AtomicU64) };
        word.store(self.done, Ordering::Release);
    }

    /// Hashes the records committed since the last call and publishes the chain head.
    /// Returns how many records it hashed.
    pub fn catch_up(&mut self) -> u64 {
        let committed = self.committed();
        if committed <= self.done {
            return 0;
        }
        let from = HEADER_SIZE + self.done as usize * RECORD_SIZE;
        let to = HEADER_SIZE + committed as usize * RECORD_SIZE;
        self.chain.update(&self.map[from..to]);
        let hashed = committed - self.done;
        self.done = committed;
        self.publish();
        hashed
    }

    /// After the writer's last commit: hashes the rest, sets CLOSED, returns the final chain.
    pub fn seal(mut self) -> ChainHead {
        self.catch_up();
        let flags = u32::from_le_bytes(
            self.map[off::FLAGS..off::FLAGS + 4]
                .try_into()
                .expect("4 bytes"),
        ) | FLAG_CLOSED;
        self.map[off::FLAGS..off::FLAGS + 4].copy_from_slice(&flags.to_le_bytes());
        self.chain.head()
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
    // SAFETY: the file is a segment of this directory, not being written (its writer died);
    // the mapping covers only bytes that exist.
    let mut map = unsafe { MmapOptions::new().len(needed as usize).map_mut(&file) }?;
    let index = u64::from_le_bytes(
        map[off::SEGMENT_INDEX..off::SEGMENT_INDEX + 8]
            .try_into()
            .expect("8"),
    );
    let prev: ChainHead = map[off::PREV_CHAIN..off::PREV_CHAIN + 32]
        .try_into()
        .expect("32");
    let mut chain = Chain::start(key, &prev, index);
    chain.update(&map[HEADER_SIZE..needed as usize]);
    let head = chain.head();
    map[off::CHAIN_HEAD..off::CHAIN_HEAD + 32].copy_from_slice(&head);
    map[off::CHAIN_RECORDS..off::CHAIN_RECORDS + 8].copy_from_slice(&valid.to_le_bytes());
    map[off::COMMITTED..off::COMMITTED + 8].copy_from_slice(&valid.to_le_bytes());
    let flags = u32::from_le_bytes(map[off::FLAGS..off::FLAGS + 4].try_into().expect("4"))
        | FLAG_CLOSED
        | FLAG_RECOVERED;
    map[off::FLAGS..off::FLAGS + 4].copy_from_slice(&flags.to_le_bytes());
    map.flush()?;
    Ok(head)
}
