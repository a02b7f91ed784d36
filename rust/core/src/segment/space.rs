//! Disk space of a segment: reserved whole with `posix_fallocate` when it is prepared, the
//! unused tail given back (hole punched) when it is closed.
use super::HEADER_SIZE;
use crate::record::RECORD_SIZE;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

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
