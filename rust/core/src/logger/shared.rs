//! [`Shared`]: the state the callers, the flusher and the direct engine share (the seq
//! counter and mark, the rings, the drop trackers, the [`Counters`], the wakers).
use super::*;

#[derive(Default)]
pub(super) struct Counters {
    pub(super) records_flushed: AtomicU64,
    pub(super) flushes: AtomicU64,
    pub(super) bytes_written: AtomicU64,
    pub(super) segments: AtomicU64,
    pub(super) sink_errors: AtomicU64,
    pub(super) durable_syncs: AtomicU64,
    pub(super) clock_state: AtomicU64,
    /// Ring positions (per ring) whose records are committed to the file.
    pub(super) committed_pos: [AtomicU64; 2],
    /// Ring positions (per ring) whose records are durable.
    pub(super) durable_pos: [AtomicU64; 2],
    /// Where the records committed so far end: `segment index << 40 | records` (see
    /// [`chain_point`]); stored before `committed_pos`, so a reader of `committed_pos` finds
    /// a point at or after its records.
    pub(super) committed_point: AtomicU64,
    /// Same encoding: how far the chain head published in the file reaches.
    pub(super) chained_point: AtomicU64,
    pub(super) seq_unreserved: AtomicU64,
    /// Records the direct engine stored (the rings' `claimed` counts the ring engine's).
    pub(super) direct_written: AtomicU64,
}

/// `(segment index, records)` packed so that later points compare greater: segments hold
/// fewer than 2**40 records (4096 MiB / 64 B = 2**26).
pub(super) fn chain_point(index: u64, records: u64) -> u64 {
    (index << 40) | records.min((1 << 40) - 1)
}

pub(super) struct Shared {
    pub(super) syncer: Syncer,
    pub(super) seq: CachePadded<AtomicU64>,
    /// The `seq_reserved` mark known to be on file: no seq at or above it is handed out
    /// (see [`SEQ_BLOCK`]). Written by the flusher only after the `pwrite` succeeded.
    pub(super) seq_reserved: CachePadded<AtomicU64>,
    /// Wakes the chainer (a chained flush wants its head now, not in a millisecond).
    pub(super) chain_nudge: OnceLock<std::sync::mpsc::Sender<ChainMsg>>,
    /// The chainer's waker (set when it starts), so a nudge also unparks it.
    pub(super) chain_waker: OnceLock<Arc<Waker>>,
    pub(super) rings: [Arc<Ring>; 2],
    pub(super) drops: [DropTracker; 2],
    pub(super) closed: AtomicBool,
    pub(super) stop: AtomicBool,
    pub(super) paused: AtomicBool,
    pub(super) flush_requested: AtomicBool,
    pub(super) sync_requested: AtomicBool,
    pub(super) counters: Counters,
    pub(super) config: LoggerConfig,
    /// Wakes the parked flusher. Padded: the flusher writes `parked` at every park, and the
    /// producers' `closed`/`seq` loads must not share its line.
    pub(super) flusher_waker: CachePadded<Waker>,
}

impl Shared {
    /// Asks the flusher for a pass now (a flush waits for it) and wakes it if it is parked.
    pub(super) fn wake_flusher(&self) {
        self.flush_requested.store(true, Ordering::Release);
        self.flusher_waker.wake();
    }

    /// Asks the chainer to hash what is committed now (and wakes it if it is parked).
    pub(super) fn nudge_chainer(&self) {
        if let Some(tx) = self.chain_nudge.get() {
            let _ = tx.send(ChainMsg::Nudge);
        }
        if let Some(w) = self.chain_waker.get() {
            w.wake();
        }
    }

    pub(super) fn stats(&self) -> Stats {
        let c = &self.counters;
        if self.config.engine == Engine::Direct {
            // No rings: what the callers wrote, and no ring numbers.
            let written = c.direct_written.load(Ordering::Relaxed);
            return Stats {
                records_written: written,
                main_ring_len: 0,
                main_ring_capacity: 0,
                emergency_ring_len: 0,
                emergency_ring_capacity: 0,
                ..self.ring_stats()
            };
        }
        self.ring_stats()
    }

    fn ring_stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            records_written: self.rings[0].claimed() + self.rings[1].claimed(),
            records_flushed: c.records_flushed.load(Ordering::Relaxed),
            dropped_main: self.drops[0].count.load(Ordering::Relaxed),
            dropped_emergency: self.drops[1].count.load(Ordering::Relaxed),
            main_ring_len: self.rings[0].len() as u64,
            main_ring_capacity: self.rings[0].capacity() as u64,
            emergency_ring_len: self.rings[1].len() as u64,
            emergency_ring_capacity: self.rings[1].capacity() as u64,
            flushes: c.flushes.load(Ordering::Relaxed),
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
            segments: c.segments.load(Ordering::Relaxed),
            sink_errors: c.sink_errors.load(Ordering::Relaxed),
            last_seq: self.seq.load(Ordering::Relaxed).saturating_sub(1),
            durable_syncs: c.durable_syncs.load(Ordering::Relaxed),
            seq_unreserved: c.seq_unreserved.load(Ordering::Relaxed),
            clock_state: c.clock_state.load(Ordering::Relaxed),
            flusher_parks: self.flusher_waker.parks(),
            flusher_wakes: self.flusher_waker.wakes(),
        }
    }
}
