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
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// Default mode of the files of a log (`audit_system.file_mode`).
pub const DEFAULT_FILE_MODE: u32 = 0o640;
/// Default mode of a log directory the logger creates (`audit_system.dir_mode`).
pub const DEFAULT_DIR_MODE: u32 = 0o750;

/// Why a directory was refused as a log directory.
#[derive(Debug)]
pub enum DirError {
    /// A system call failed.
    Io(io::Error),
    /// The directory is not safe: the message names it and says why.
    Refused(String),
    /// The path exists and is not a directory: the message names it.
    NotADirectory(String),
}

impl From<io::Error> for DirError {
    fn from(e: io::Error) -> DirError {
        DirError::Io(e)
    }
}

fn cstr(name: &str) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// The log directory, opened once. Every file of the log is created relative to this
/// descriptor (`openat`), with `O_CREAT|O_EXCL|O_NOFOLLOW` and an explicit mode: a symlink
/// planted in the directory is never followed, and renaming the directory away while the
/// logger runs cannot redirect its writes.
pub struct LogDir {
    fd: File,
    path: PathBuf,
    file_mode: u32,
}

impl LogDir {
    /// Opens (creating it with `dir_mode` if missing) the log directory `path` and checks that
    /// it is safe: a directory, owned by this user, not writable by others (as OpenSSH checks
    /// `~/.ssh`). New files get exactly `file_mode`, whatever the umask.
    pub fn open(path: &Path, dir_mode: u32, file_mode: u32) -> Result<LogDir, DirError> {
        match std::fs::metadata(path) {
            Ok(m) if !m.is_dir() => {
                return Err(DirError::NotADirectory(format!(
                    "{}: is not a directory (the audit log needs a directory of its own)",
                    path.display()
                )))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent)?;
                }
                use std::os::unix::fs::DirBuilderExt;
                match std::fs::DirBuilder::new().mode(dir_mode).create(path) {
                    Ok(()) => {
                        // The umask narrowed the mode given to mkdir: set it exactly.
                        use std::os::unix::fs::PermissionsExt;
                        std::fs::set_permissions(path, std::fs::Permissions::from_mode(dir_mode))?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
        let fd = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(path)?;
        let dir = LogDir {
            fd,
            path: path.to_path_buf(),
            file_mode,
        };
        dir.check_safe()?;
        Ok(dir)
    }

    /// Opens an existing directory without checks, with the default file mode (benchmarks).
    pub fn open_unchecked(path: &Path) -> io::Result<LogDir> {
        let fd = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(path)?;
        Ok(LogDir {
            fd,
            path: path.to_path_buf(),
            file_mode: DEFAULT_FILE_MODE,
        })
    }

    fn check_safe(&self) -> Result<(), DirError> {
        use std::os::unix::fs::MetadataExt;
        let m = self.fd.metadata()?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if m.uid() != me {
            return Err(DirError::Refused(format!(
                "{}: owned by uid {}, not by this user (uid {me}): another user could replace \
                 or forge its audit files; use a directory of your own",
                self.path.display(),
                m.uid()
            )));
        }
        if m.mode() & 0o002 != 0 {
            return Err(DirError::Refused(format!(
                "{}: is world-writable (mode {:o}): anyone could plant or delete audit files; \
                 chmod o-w it or use another directory",
                self.path.display(),
                m.mode() & 0o7777
            )));
        }
        Ok(())
    }

    /// The directory's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// (device, inode) of the directory.
    pub fn identity(&self) -> io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let m = self.fd.metadata()?;
        Ok((m.dev(), m.ino()))
    }

    /// Creates `name` (which must not exist: `O_EXCL`, never following a symlink) with the
    /// log's file mode, read-write.
    pub fn create_new(&self, name: &str) -> io::Result<File> {
        let c = cstr(name)?;
        // SAFETY: `c` is a NUL-terminated string that outlives the call; the fd is ours.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                self.file_mode as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by openat and is owned by nobody else.
        let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // The umask narrowed the mode given to openat: set it exactly.
        // SAFETY: plain syscall on the descriptor we own.
        if unsafe { libc::fchmod(file.as_raw_fd(), self.file_mode as libc::mode_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(file)
    }

    /// Replaces whatever `name` is (a stale file, a planted symlink: the link itself goes, its
    /// target is untouched) with a new empty file.
    pub fn replace(&self, name: &str) -> io::Result<File> {
        for _ in 0..3 {
            match self.unlink(name) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            match self.create_new(name) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                other => return other,
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{name}: recreated by someone else while being replaced"),
        ))
    }

    /// Opens an existing regular file of the log read-write, never following a symlink.
    pub fn open_rw(&self, name: &str) -> io::Result<File> {
        let c = cstr(name)?;
        // SAFETY: `c` is a NUL-terminated string that outlives the call; the fd is ours.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by openat and is owned by nobody else.
        Ok(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
    }

    /// Removes `name` (a symlink itself, never its target).
    pub fn unlink(&self, name: &str) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: `c` is a NUL-terminated string that outlives the call.
        if unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Renames `from` to `to` inside the directory.
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (a, b) = (cstr(from)?, cstr(to)?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: both names are NUL-terminated strings that outlive the call.
        if unsafe { libc::renameat(fd, a.as_ptr(), fd, b.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
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

/// Gives the disk blocks after the last record of a closed segment back to the filesystem
/// (`FALLOC_FL_PUNCH_HOLE`, size kept): a segment is fallocated whole when it is opened, and
/// without this a session that wrote ten records would hold its full `segment_size_mb` on disk
/// for as long as the log is kept. The size stays, so nothing at or after `committed` moves;
/// the hole reads as zeros, as unwritten fallocated space does. Filesystems without hole
/// punching answer `EOPNOTSUPP`: the space then stays allocated, which is only a cost.
pub fn release_unused_tail(file: &File, records: u64) -> io::Result<()> {
    let used = (HEADER_SIZE as u64 + records * RECORD_SIZE as u64).next_multiple_of(4096);
    let len = file.metadata()?.len();
    if used >= len {
        return Ok(());
    }
    // SAFETY: plain syscall on an fd we own; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            used as libc::off_t,
            (len - used) as libc::off_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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

/// Removes stale `*.seg.next` files left by a crash (a planted symlink: the link, not its
/// target).
pub fn remove_stale_prepared(dir: &LogDir) -> io::Result<()> {
    for entry in std::fs::read_dir(dir.path())? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".seg.next") {
            dir.unlink(&name)?;
        }
    }
    Ok(())
}

/// Hashes the first `count` records of a segment file after `prev`; also returns the chain
/// value after the first `check_at` records when `check_at <= count`.
fn hash_records(
    file: &File,
    key: Option<&[u8]>,
    prev: &ChainHead,
    index: u64,
    count: u64,
    check_at: u64,
) -> io::Result<(ChainHead, Option<ChainHead>)> {
    let mut chain = Chain::start(key, prev, index);
    let mut at_check = (check_at == 0).then(|| chain.head());
    let mut buf = vec![0u8; STAGE_RECORDS * RECORD_SIZE];
    let mut done = 0u64;
    while done < count {
        let mut n = (count - done).min(STAGE_RECORDS as u64);
        if done < check_at && done + n > check_at {
            n = check_at - done;
        }
        let bytes = &mut buf[..n as usize * RECORD_SIZE];
        file.read_exact_at(bytes, HEADER_SIZE as u64 + done * RECORD_SIZE as u64)?;
        chain.update(bytes);
        done += n;
        if done == check_at {
            at_check = Some(chain.head());
        }
    }
    Ok((chain.head(), at_check))
}

/// Does the `chain_head` of this segment's header verify over its `chain_records` records
/// with `key`? (A closed segment's chain covers all its records: this is how a wrong HMAC key
/// is told at open.) `None` when the header claims more records than the file holds.
pub fn writer_chain_verifies(file: &File, key: Option<&[u8]>) -> io::Result<Option<bool>> {
    let h = read_header(file)?;
    let len = file.metadata()?.len();
    let n = header_u64(&h, off::CHAIN_RECORDS);
    if n > len.saturating_sub(HEADER_SIZE as u64) / RECORD_SIZE as u64 {
        return Ok(None);
    }
    let index = header_u64(&h, off::SEGMENT_INDEX);
    let prev = header_chain(&h, off::PREV_CHAIN);
    let (head, _) = hash_records(file, key, &prev, index, n, n)?;
    Ok(Some(head == header_chain(&h, off::CHAIN_HEAD)))
}

/// What [`seal_after_crash`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealReport {
    /// The final chain value (the next segment's `prev_chain`).
    pub head: ChainHead,
    /// Records the dead writer had chained itself (now in `writer_chained`); 0 when its own
    /// chain head did not verify.
    pub writer_chained: u64,
    /// The dead writer's `chain_records`, as its header said.
    pub claimed_chained: u64,
    /// False when the writer's own chain head does not verify over its `chain_records`
    /// records (damage, tampering, or a wrong key): none of its records is then trusted.
    pub writer_chain_ok: bool,
}

/// Seals a segment left open by a crash: `committed` and the chain cover exactly the
/// `valid` records a reader found, and the CLOSED and RECOVERED flags are set.
///
/// Before anything is written, the dead writer's own chain head is checked over its
/// `chain_records` records. `writer_chained` records how many records the writer itself
/// chained (0 when its head does not verify): records after that index were hashed by
/// recovery, not by their writer, so restore never lets them lift a halt (docs/FORMAT.md).
pub fn seal_after_crash(
    dir: &LogDir,
    path: &Path,
    valid: u64,
    key: Option<&[u8]>,
) -> io::Result<SealReport> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = dir.open_rw(&name)?;
    let len = file.metadata()?.len();
    let needed = HEADER_SIZE as u64 + valid * RECORD_SIZE as u64;
    if len < needed {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: shorter than its records", path.display()),
        ));
    }
    let header = read_header(&file)?;
    let index = header_u64(&header, off::SEGMENT_INDEX);
    let prev = header_chain(&header, off::PREV_CHAIN);
    let claimed = header_u64(&header, off::CHAIN_RECORDS);
    let claimed_head = header_chain(&header, off::CHAIN_HEAD);
    let (head, at_claimed) = hash_records(&file, key, &prev, index, valid, claimed)?;
    let old_flags = header_u32(&header, off::FLAGS);
    let (writer_chained, writer_chain_ok) = if old_flags & FLAG_RECOVERED != 0 {
        // A seal interrupted by another crash: the chain fields may already be recovery's own,
        // so the writer's count is the one recorded before them.
        (header_u64(&header, off::WRITER_CHAINED).min(valid), true)
    } else {
        // A writer that died before its chainer published anything left zeros: nothing chained.
        let nothing_chained = claimed == 0 && claimed_head == [0; 32];
        let ok = nothing_chained || at_claimed == Some(claimed_head);
        (if ok && !nothing_chained { claimed } else { 0 }, ok)
    };
    // Order matters for a crash during the seal: `writer_chained` and RECOVERED first, then
    // the chain recovery computed, then CLOSED.
    file.write_all_at(&writer_chained.to_le_bytes(), off::WRITER_CHAINED as u64)?;
    file.write_all_at(
        &(old_flags | FLAG_RECOVERED).to_le_bytes(),
        off::FLAGS as u64,
    )?;
    file.write_all_at(&valid.to_le_bytes(), off::COMMITTED as u64)?;
    let mut chain_fields = [0u8; 40];
    chain_fields[..8].copy_from_slice(&valid.to_le_bytes());
    chain_fields[8..].copy_from_slice(&head);
    file.write_all_at(&chain_fields, off::CHAIN_RECORDS as u64)?;
    let flags = old_flags | FLAG_CLOSED | FLAG_RECOVERED;
    file.write_all_at(&flags.to_le_bytes(), off::FLAGS as u64)?;
    file.sync_data()?;
    Ok(SealReport {
        head,
        writer_chained,
        claimed_chained: claimed,
        writer_chain_ok,
    })
}
