//! The shared mapping of a state file, seen as atomic words, and the checks a file passes
//! (regular, not a symlink, `FILE_SIZE` bytes, not world-writable) before it is mapped.
use super::{io_err, ControlError, FILE_SIZE, WORDS};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// A shared mapping of a state file, seen as `WORDS` atomic words.
pub(super) struct Map {
    ptr: *mut AtomicU64,
    pub(super) writable: bool,
}

// SAFETY: the mapping is only accessed through atomic word loads/stores, and unmapped in Drop
// when no reference to it remains.
unsafe impl Send for Map {}
// SAFETY: as above: every access is an atomic operation on the shared words.
unsafe impl Sync for Map {}

impl Map {
    pub(super) fn new(file: &File, writable: bool, path: &Path) -> Result<Map, ControlError> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh mapping of FILE_SIZE bytes of an open fd whose size was checked to be
        // FILE_SIZE; the kernel chooses the address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                FILE_SIZE,
                prot,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(ControlError::Io(path.into(), io::Error::last_os_error()));
        }
        Ok(Map {
            ptr: p.cast(),
            writable,
        })
    }

    #[inline(always)]
    pub(super) fn word(&self, i: usize) -> &AtomicU64 {
        debug_assert!(i < WORDS);
        // SAFETY: i < WORDS (every caller indexes within the fixed layout); the mapping is
        // FILE_SIZE bytes, page aligned, and lives as long as self.
        unsafe { &*self.ptr.add(i) }
    }

    #[inline(always)]
    pub(super) fn load(&self, byte_off: usize) -> u64 {
        self.word(byte_off / 8).load(Ordering::Relaxed)
    }

    pub(super) fn load_bytes(&self, off: usize, out: &mut [u8]) {
        for (k, chunk) in out.chunks_mut(8).enumerate() {
            let w = self.load(off + k * 8).to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
    }

    pub(super) fn store(&self, byte_off: usize, v: u64) {
        debug_assert!(self.writable);
        self.word(byte_off / 8).store(v, Ordering::Relaxed);
    }

    pub(super) fn store_bytes(&self, off: usize, bytes: &[u8], len: usize) {
        let mut buf = vec![0u8; len];
        buf[..bytes.len()].copy_from_slice(bytes);
        for (k, chunk) in buf.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.store(off + k * 8, u64::from_le_bytes(w));
        }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: ptr/FILE_SIZE is the mapping made in `new`; no reference outlives self.
        unsafe {
            libc::munmap(self.ptr.cast(), FILE_SIZE);
        }
    }
}

pub(super) fn open_checked(path: &Path, writable: bool) -> Result<File, ControlError> {
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err(path))?;
    let md = file.metadata().map_err(io_err(path))?;
    let bad = |why: String| Err(ControlError::Invalid(path.into(), why));
    if !md.file_type().is_file() {
        return bad("not a regular file".into());
    }
    if md.len() != FILE_SIZE as u64 {
        return bad(format!(
            "size {} (a state file has {FILE_SIZE} bytes)",
            md.len()
        ));
    }
    if md.mode() & 0o002 != 0 {
        return bad(format!(
            "mode {:o} is world-writable: anyone could lift a halt",
            md.mode() & 0o7777
        ));
    }
    Ok(file)
}
