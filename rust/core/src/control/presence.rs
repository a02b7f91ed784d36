//! A joined process's presence file under `<control>/procs/`: created exclusively, held
//! under `flock` for the life of the process, rewritten in place.
use super::{io_err, ControlError};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// A joined process's presence file: `<procs>/<name>`, created `O_EXCL|O_NOFOLLOW`, held
/// under an exclusive `flock` for the life of the process (a file whose lock can be taken
/// belongs to a dead process: stale). Content: one JSON object, space-padded to
/// `PRESENCE_SIZE` bytes, rewritten in place with one `pwrite`.
pub struct Presence {
    file: File,
    path: PathBuf,
}

/// Size of a presence file.
pub const PRESENCE_SIZE: usize = 4096;

impl Presence {
    /// Creates and locks the presence file.
    pub fn create(path: &Path) -> Result<Presence, ControlError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(io_err(path))?;
        // SAFETY: flock on our own open fd.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(ControlError::Io(path.into(), io::Error::last_os_error()));
        }
        Ok(Presence {
            file,
            path: path.into(),
        })
    }

    /// Rewrites the content (truncated to `PRESENCE_SIZE` bytes, space padded).
    pub fn write(&self, json: &str) -> Result<(), ControlError> {
        let mut buf = vec![b' '; PRESENCE_SIZE];
        let b = json.as_bytes();
        let n = b.len().min(PRESENCE_SIZE - 1);
        buf[..n].copy_from_slice(&b[..n]);
        buf[PRESENCE_SIZE - 1] = b'\n';
        self.file.write_all_at(&buf, 0).map_err(io_err(&self.path))
    }

    /// Removes the file (a clean leave).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
