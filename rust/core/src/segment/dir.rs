//! [`LogDir`]: the log directory opened once and checked (ours, not world-writable); every
//! file of the log is created, opened, renamed and removed relative to its descriptor.
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

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
