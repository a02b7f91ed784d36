//! [`Direct`]: the direct engine ([`Engine::Direct`]), the flusher's sink and system
//! records driven by the callers under a mutex.
use super::*;

/// The direct engine: the flusher's sink and system records, driven by the callers.
pub(super) struct Direct {
    pub(super) flusher: Flusher,
    /// When the periodic work (CLOCK record, GAPs, the seq mark) is next due.
    pub(super) next_tick: Instant,
    /// When `stats.bin` was last written.
    pub(super) last_publish: Option<Instant>,
}

impl Direct {
    /// The periodic work of a flusher pass, at most every `flush_interval`, by whichever
    /// caller comes first: clock re-anchoring, the CLOCK record, GAP records for drops, the
    /// `seq_reserved` mark and the chain; `stats.bin` once a second. No `sync_file_range` writeback
    /// here: it can block on a busy device queue, and here the caller would wait (measured:
    /// ~1 call in 1,000 over 1 ms under load with it); the kernel's own writeback of a few
    /// MB/s of records suffices.
    pub(super) fn tick(&mut self) {
        let now = Instant::now();
        if now < self.next_tick {
            return;
        }
        let cfg = &self.flusher.shared.config;
        let (interval, clock_interval) = (cfg.flush_interval, cfg.clock_check_interval);
        self.next_tick = now + interval;
        let f = &mut self.flusher;
        f.calibration.maybe_reanchor(clock::monotonic_ns());
        f.check_clock(now, clock_interval);
        f.raise_mark();
        f.note_gaps();
        // Hash what was committed since the last tick (~2 ms of records), so the chain head
        // on file stays close behind and a roll or close has little left to hash (measured
        // before: a roll hashing a whole 64 MiB segment and syncing it took 234 ms of one call).
        f.sink.chainer.catch_up(&f.shared);
        if self
            .last_publish
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            f.stats_file.publish(&f.shared.stats());
            self.last_publish = Some(now);
        }
    }
}
