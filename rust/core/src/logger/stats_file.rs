//! [`StatsFile`]: `stats.bin`, the live counters another process reads.
use super::*;

/// `stats.bin`: live counters readable by `killswitch-audit stats DIR` from another process.
/// Written with `pwrite`, like the segments: no writable mapping in the caller's process.
pub(super) struct StatsFile {
    file: Option<std::fs::File>,
}

impl StatsFile {
    const SIZE: usize = 4096;
    const MAGIC: &'static [u8; 8] = b"KSSTATS1";

    /// A new `stats.bin`: whatever had the name (a stale file, a planted symlink) is
    /// unlinked, never followed (`O_EXCL|O_NOFOLLOW`).
    pub(super) fn create(dir: &LogDir) -> io::Result<StatsFile> {
        use std::os::unix::fs::FileExt;
        let file = dir.replace("stats.bin")?;
        segment::allocate(&file, Self::SIZE as u64)?;
        file.write_all_at(Self::MAGIC, 0)?;
        Ok(StatsFile { file: Some(file) })
    }

    pub(super) fn publish(&mut self, s: &Stats) {
        use std::os::unix::fs::FileExt;
        let Some(file) = self.file.as_ref() else {
            return;
        };
        let fields = [
            std::process::id() as u64,
            clock::realtime_ns(),
            s.records_written,
            s.records_flushed,
            s.dropped_main,
            s.dropped_emergency,
            s.main_ring_len,
            s.main_ring_capacity,
            s.emergency_ring_len,
            s.emergency_ring_capacity,
            s.flushes,
            s.bytes_written,
            s.segments,
            s.sink_errors,
            s.last_seq,
        ];
        let mut bytes = [0u8; 15 * 8];
        for (chunk, v) in bytes.chunks_exact_mut(8).zip(fields) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        // A failed write only makes the live counters stale; the log itself is unaffected.
        let _ = file.write_all_at(&bytes, 8);
    }
}
