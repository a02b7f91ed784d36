//! [`Flusher`]: the thread that drains the rings into the sink, writes the system records
//! (GAP, CLOCK, SESSION_END) and keeps the `seq_reserved` mark ahead of the counter.
use super::*;

/// Seq of a queued system record that has none yet.
const UNASSIGNED: u64 = u64::MAX;

/// How far ahead of the counter the flusher puts the `seq_reserved` mark (it raises it when
/// less than half of this is left). The hot path never makes a syscall, so the mark must stay
/// ahead of it for as long as the flusher can be late. The counter is one shared `fetch_add`:
/// even on many cores it advances at most ~100 million a second (a contended atomic costs
/// ≥ 10 ns; one thread's append is ~20 ns in Rust, ~100 ns from Python). Half a block, 2**27,
/// is then more than 1.3 s of the fastest possible appends and ~13 s of one Python thread at
/// full rate, while the flusher looks every `emergency_poll` (50 µs). If it is late anyway
/// (a hung disk), appends at or above the mark are refused, counted in `seq_unreserved`
/// and declared by a GAP record: no seq is handed out that a crash could repeat. The price
/// is seq space: a crashed session skips at most 2**28 seqs (of 2**62, see [`SEQ_LIMIT`]).
pub(super) const SEQ_BLOCK: u64 = 1 << 28;

/// No real counter reaches this (2**62: ~1,400 years at 100 million a second); a seq or mark
/// at or above it in a file is damage, never a start for the counter, which thus never wraps.
pub const SEQ_LIMIT: u64 = 1 << 62;

/// Main-ring records moved per step before the flusher looks at the emergency ring again.
const MAIN_CHUNK: usize = 4096;

/// Idle passes the flusher spins, then yields, before it parks (crate::idle): a few µs in which
/// a following record costs no wakeup.
const FLUSHER_SPINS: u32 = 20;
const FLUSHER_YIELDS: u32 = 4;
/// The flusher's longest park: how long a main-ring record written after a quiet period may
/// wait for the file (a kill-switch record, a flush or a quarter-full main ring wake it at once;
/// while records flow the park is capped at the flush interval). A wakeup costs ~50-70 µs of
/// CPU on the 2-vCPU VM (timer, context switch, one pass): 100 a second were 0.6 % of a core,
/// 20 a second keep an idle process well under 1 % (BENCHMARKS.md, idle).
const FLUSHER_MAX_PARK: Duration = Duration::from_millis(50);

/// Slots of the current segment main-ring records leave free at shutdown, for the records that
/// close the session: a GAP per ring and SESSION_END (and a CLOCK record that may be pending).
pub(super) const SHUTDOWN_SLOTS: u64 = 4;

pub(super) struct Flusher {
    pub(super) shared: Arc<Shared>,
    pub(super) consumers: [Consumer; 2],
    pub(super) sink: Sink,
    pub(super) calibration: Calibration,
    pub(super) stats_file: StatsFile,
    pub(super) reported_drops: [u64; 2],
    /// Range of the latest GAP per ring, reused when a count arrives without its range.
    pub(super) gap_range: [(u64, u64); 2],
    /// System records not yet written (no room), oldest first.
    pub(super) pending_system: Vec<Record>,
    pub(super) last_clock_check: Option<Instant>,
}

impl Flusher {
    /// Queues a system record. Its seq is taken when it is written (so merging two never loses
    /// one). GAP records of one ring merge while waiting (the range grows, the counts add up)
    /// and a newer CLOCK record replaces a waiting one: on a full disk they cannot flood the
    /// reserve that kill-switch records need (issue 11, row 10).
    pub(super) fn push_system(&mut self, kind: u8, code: u16, a: i64, b: i64, c: u64) {
        let (mono_ns, wall_ns) = self.calibration.to_ns(clock::ticks());
        if kind == kind::GAP || kind == kind::CLOCK {
            if let Some(p) = self
                .pending_system
                .iter_mut()
                .find(|r| r.kind == kind && (kind == kind::CLOCK || r.code == code))
            {
                if kind == kind::GAP {
                    p.a = p.a.min(a);
                    p.b += b;
                    p.c = p.c.max(c);
                } else {
                    (p.code, p.a, p.b, p.c) = (code, a, b, c);
                }
                (p.mono_ns, p.wall_ns) = (mono_ns, wall_ns);
                return;
            }
        }
        self.pending_system.push(Record {
            seq: UNASSIGNED,
            wall_ns,
            mono_ns,
            kind,
            flags: FLAG_SYSTEM,
            code,
            thread_id: 0,
            a,
            b,
            c,
            symbol_id: 0,
            crc32c: 0,
        });
    }

    /// Keeps the `seq_reserved` mark on file at least half a block ahead of the counter
    /// (pwrite into the current header; the in-memory mark follows only once it is there).
    pub(super) fn raise_mark(&mut self) {
        let s = &*self.shared;
        let next = s.seq.load(Ordering::Relaxed);
        let mark = s.seq_reserved.load(Ordering::Relaxed);
        if next.saturating_add(SEQ_BLOCK / 2) <= mark {
            return;
        }
        let new = next.saturating_add(SEQ_BLOCK).min(SEQ_LIMIT);
        if new <= mark {
            return;
        }
        let Some(seg) = self.sink.current.as_ref() else {
            return;
        };
        match seg.write_seq_reserved(new) {
            Ok(()) => s.seq_reserved.store(new, Ordering::Release),
            Err(_) => {
                s.counters.sink_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A seq for a system record, below the mark on file.
    fn system_seq(&mut self) -> u64 {
        let seq = self.shared.seq.fetch_add(1, Ordering::Relaxed);
        if seq >= self.shared.seq_reserved.load(Ordering::Relaxed) {
            self.raise_mark();
        }
        seq
    }

    pub(super) fn run(mut self) {
        set_timer_slack_ns(1_000);
        yield_to_callers();
        let cfg = self.shared.config.clone();
        let shared = Arc::clone(&self.shared);
        let waker = &*shared.flusher_waker;
        waker.register_current();
        let mut backoff = Backoff::new(
            FLUSHER_SPINS,
            FLUSHER_YIELDS,
            cfg.emergency_poll,
            FLUSHER_MAX_PARK,
        );
        let mut next_main = Instant::now();
        let mut last_writeback = Instant::now();
        let mut last_publish = (Instant::now(), Stats::default());
        loop {
            let stopping = self.shared.stop.load(Ordering::Acquire);
            if self.shared.paused.load(Ordering::Acquire) && !stopping {
                // The test hook for a stalled sink: a flusher stuck in a write that does not
                // return. It must not *park* (producers would then wake it on every
                // kill-switch record, a futex round trip a stuck writer never causes), so it
                // sleeps without announcing itself, whatever the idle strategy.
                std::thread::sleep(cfg.emergency_poll);
                continue;
            }
            let now = Instant::now();
            self.calibration.maybe_reanchor(clock::monotonic_ns());
            self.sink.poll_prepared(&self.shared);
            self.check_clock(now, cfg.clock_check_interval);
            self.raise_mark();
            self.note_gaps();
            let mut wrote_emergency = self.write_pending_system();
            if self.drain(RingId::Emergency, usize::MAX) > 0 {
                // In the file before the main ring is drained (`flush_emergency` waits on it).
                self.commit(false);
                wrote_emergency = true;
            }
            let mut worked = wrote_emergency;
            let main_ring = &self.shared.rings[0];
            let flush_requested = self.shared.flush_requested.swap(false, Ordering::AcqRel);
            if stopping
                || flush_requested
                || now >= next_main
                || main_ring.len() * 4 >= main_ring.capacity()
            {
                // In chunks, so a kill-switch record arriving meanwhile waits for one chunk
                // (tens of µs), not for the whole main ring.
                loop {
                    let n = self.drain(RingId::Main, MAIN_CHUNK);
                    worked |= n > 0;
                    if n < MAIN_CHUNK {
                        break;
                    }
                    if !self.shared.rings[1].is_empty() {
                        self.drain(RingId::Emergency, usize::MAX);
                        self.commit(cfg.durable_kill_switch);
                    }
                }
                next_main = now + cfg.flush_interval;
            }
            let sync_requested = self.shared.sync_requested.swap(false, Ordering::AcqRel);
            self.commit(wrote_emergency && cfg.durable_kill_switch || sync_requested || stopping);
            if now.duration_since(last_writeback) >= cfg.flush_interval {
                if let Some(seg) = self.sink.current.as_mut() {
                    seg.start_writeback();
                }
                // An idle logger rewrites stats.bin once a second (its `updated` time), not at
                // every wakeup: a syscall less per wakeup.
                let stats = self.shared.stats();
                if !stats.same_counts(&last_publish.1)
                    || now.duration_since(last_publish.0) >= Duration::from_secs(1)
                {
                    self.stats_file.publish(&stats);
                    last_publish = (now, stats);
                }
                last_writeback = now;
            }
            if stopping
                && self.shared.rings.iter().all(|r| r.is_empty())
                && self.pending_system.is_empty()
            {
                self.finish();
                return;
            }
            if stopping
                && self
                    .sink
                    .current
                    .as_ref()
                    .is_none_or(|c| c.remaining() <= SHUTDOWN_SLOTS)
                && self.sink.next.is_none()
                && self.sink.preparing.is_none()
            {
                // Disk full at shutdown: the main ring cannot be drained any further (before,
                // this waited for `remaining() == 0`, which main-ring records never reach: close()
                // never returned). finish() counts what is left as dropped and GAP-records it.
                self.finish();
                return;
            }
            match cfg.idle_strategy {
                IdleStrategy::BusyPoll => std::thread::sleep(cfg.emergency_poll),
                IdleStrategy::Backoff if worked => backoff.reset(),
                IdleStrategy::Backoff => {
                    // close() and set_paused() wake unconditionally: no need to re-check them.
                    let cap = self.park_cap(next_main, cfg.clock_check_interval);
                    backoff.idle(waker, cap, || {
                        !shared.rings[1].is_empty()
                            || shared.flush_requested.load(Ordering::Acquire)
                            || shared.sync_requested.load(Ordering::Acquire)
                            || shared.rings[0].len() * 4 >= shared.rings[0].capacity()
                    });
                }
            }
        }
    }

    /// The longest the flusher may park: until the main ring's next drain when something
    /// waits (main-ring or unwritten records), else until the next CLOCK check, at most
    /// [`FLUSHER_MAX_PARK`]. Producers of urgent work wake it sooner.
    fn park_cap(&self, next_main: Instant, clock_interval: Duration) -> Duration {
        let now = Instant::now();
        let waiting =
            self.shared.rings.iter().any(|r| !r.is_empty()) || !self.pending_system.is_empty();
        let until = if waiting {
            next_main
        } else {
            self.last_clock_check.map_or(now, |t| t + clock_interval)
        };
        until
            .saturating_duration_since(now)
            .clamp(Duration::from_micros(1), FLUSHER_MAX_PARK)
    }

    /// Turns drop counts into GAP records.
    ///
    /// The range and the count are three atomics: a drop noted while they are taken could land
    /// its range in this GAP and its count in the next one (whose range then misses it). So the
    /// snapshot is kept only if no note was in progress and the count did not move; otherwise
    /// the range is put back and the GAP waits for the next pass. Returns false when a ring
    /// was deferred that way.
    pub(super) fn note_gaps(&mut self) -> bool {
        let mut clean = true;
        for ring in [RingId::Emergency, RingId::Main] {
            let i = ring as usize;
            let tracker = &self.shared.drops[i];
            let count = tracker.count.load(Ordering::SeqCst);
            let new = count - self.reported_drops[i];
            if new == 0 {
                continue;
            }
            let first = tracker.first.swap(u64::MAX, Ordering::SeqCst);
            let last = tracker.last.swap(0, Ordering::SeqCst);
            if tracker.busy.load(Ordering::SeqCst) != 0
                || tracker.count.load(Ordering::SeqCst) != count
            {
                tracker.first.fetch_min(first, Ordering::SeqCst);
                tracker.last.fetch_max(last, Ordering::SeqCst);
                clean = false;
                continue;
            }
            if first != u64::MAX {
                self.gap_range[i] = (first, last);
            }
            let (first, last) = self.gap_range[i];
            self.reported_drops[i] = count;
            self.push_system(kind::GAP, i as u16, first as i64, new as i64, last);
        }
        clean
    }

    pub(super) fn check_clock(&mut self, now: Instant, interval: Duration) {
        if self
            .last_clock_check
            .is_some_and(|t| now.duration_since(t) < interval)
        {
            return;
        }
        self.last_clock_check = Some(now);
        let c = clock_sync_state();
        self.shared
            .counters
            .clock_state
            .store(c.state as u64, Ordering::Relaxed);
        self.push_system(
            kind::CLOCK,
            c.state,
            c.est_error_us,
            c.max_error_us,
            c.status_bits,
        );
    }

    /// Writes waiting system records. In the reserve of a segment (no room left for the main
    /// ring), a GAP per ring and a CLOCK record take one slot each at most; later ones stay
    /// queued, merged, until the next segment or shutdown.
    pub(super) fn write_pending_system(&mut self) -> bool {
        let stopping = self.shared.stop.load(Ordering::Acquire);
        let mut written = 0u64;
        let mut i = 0;
        while i < self.pending_system.len() {
            let seq_hint = self.shared.seq.load(Ordering::Relaxed);
            if self.sink.room(&self.shared, true, seq_hint) == 0 {
                break;
            }
            let r = &self.pending_system[i];
            let slot = match (r.kind, r.code) {
                (kind::GAP, 0) => Some(0),
                (kind::GAP, _) => Some(1),
                (kind::CLOCK, _) => Some(2),
                _ => None,
            };
            if let Some(slot) = slot.filter(|_| !stopping && self.sink.in_reserve()) {
                if self.sink.reserve_used[slot] {
                    i += 1;
                    continue;
                }
                self.sink.reserve_used[slot] = true;
            }
            if self.pending_system[i].seq == UNASSIGNED {
                self.pending_system[i].seq = self.system_seq();
            }
            let bytes = self.pending_system[i].to_bytes();
            let Some(seg) = self.sink.current.as_mut() else {
                break;
            };
            if !seg.append(&bytes) {
                break;
            }
            self.pending_system.remove(i);
            written += 1;
        }
        self.shared
            .counters
            .records_flushed
            .fetch_add(written, Ordering::Relaxed);
        written > 0
    }

    /// Moves up to `max` records from one ring into the segment, as many as fit.
    fn drain(&mut self, ring: RingId, max: usize) -> usize {
        let emergency = ring == RingId::Emergency;
        let mut total = 0;
        while total < max {
            if self.shared.rings[ring as usize].is_empty() {
                break;
            }
            let seq_hint = self.shared.seq.load(Ordering::Relaxed);
            let room =
                (self.sink.room(&self.shared, emergency, seq_hint) as usize).min(max - total);
            if room == 0 {
                break;
            }
            let Some(seg) = self.sink.current.as_mut() else {
                break;
            };
            let cal = &self.calibration;
            let n = self.consumers[ring as usize].drain(room, |e| {
                let (mono_ns, wall_ns) = cal.to_ns(e.ticks);
                seg.append(&Record::from_entry(e, mono_ns, wall_ns).to_bytes());
            });
            total += n;
            if n < room {
                break;
            }
        }
        self.shared
            .counters
            .records_flushed
            .fetch_add(total as u64, Ordering::Relaxed);
        total
    }

    /// Publishes what was written; with `sync`, asks the syncer thread to make it durable
    /// (the flusher itself never waits for the disk; the direct engine syncs inline). True
    /// when everything written is committed (and, with `sync` inline, synced).
    pub(super) fn commit(&mut self, sync: bool) -> bool {
        let Some(seg) = self.sink.current.as_mut() else {
            return false;
        };
        let c = &self.shared.counters;
        if seg.commit().is_err() {
            // Nothing published: the records stay staged and the next pass retries.
            c.sink_errors.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let mut ok = true;
        c.committed_point
            .fetch_max(chain_point(seg.index(), seg.written()), Ordering::AcqRel);
        let consumed = [0, 1].map(|i| self.shared.rings[i].consumed());
        for (pos, value) in c.committed_pos.iter().zip(consumed) {
            pos.store(value, Ordering::Release);
        }
        self.sink
            .chainer
            .committed(c.records_flushed.load(Ordering::Relaxed));
        if sync && self.sink.inline {
            // Rolled segments first: a durable flush covers every record returned before it.
            let rolled = std::mem::take(&mut self.sink.unsynced);
            for f in &rolled {
                ok &= f.sync_data().is_ok();
            }
            ok &= seg.sync_data().is_ok();
            let counter = if ok { &c.durable_syncs } else { &c.sink_errors };
            counter.fetch_add(1, Ordering::Relaxed);
        } else if sync {
            match seg.sync_handle() {
                Ok(file) => self.shared.syncer.post(file, Some(consumed)),
                Err(_) => {
                    c.sink_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        c.flushes.fetch_add(1, Ordering::Relaxed);
        c.bytes_written.store(
            c.records_flushed.load(Ordering::Relaxed) * RECORD_SIZE as u64,
            Ordering::Relaxed,
        );
        ok
    }

    /// The direct engine's write of one caller's record: room (rolling inline when the
    /// segment is full), encode, stage. False when there is no room for it.
    pub(super) fn write_one(&mut self, ring: RingId, e: &Entry) -> bool {
        let emergency = ring == RingId::Emergency;
        if self.sink.room(&self.shared, emergency, e.seq) == 0 {
            return false;
        }
        let Some(seg) = self.sink.current.as_mut() else {
            return false;
        };
        let (mono_ns, wall_ns) = self.calibration.to_ns(e.ticks);
        if !seg.append(&Record::from_entry(e, mono_ns, wall_ns).to_bytes()) {
            return false;
        }
        self.shared
            .counters
            .records_flushed
            .fetch_add(1, Ordering::Relaxed);
        true
    }

    /// A clean close hands out no seq any more: the marks of this session's segments come down
    /// to the counter, so the next session continues right after the last record instead of
    /// a block later (which `verify` would report as a possible loss). A crash during this
    /// leaves some marks high: recovery takes the highest, the safe direction.
    fn lower_mark_at_close(&mut self) {
        let end = self.shared.seq.load(Ordering::SeqCst);
        for index in self.sink.session_first..self.sink.next_index {
            if let Ok(f) = self.sink.dir.open_rw(&format!("{index:012}.seg")) {
                use std::os::unix::fs::FileExt;
                let _ = f.write_all_at(&end.to_le_bytes(), off::SEQ_RESERVED as u64);
            }
        }
        self.shared.seq_reserved.store(end, Ordering::SeqCst);
    }

    pub(super) fn finish(&mut self) {
        // Records still in the rings can no longer be written (disk full at shutdown): count
        // them as dropped, so that the GAP records below (and the counters) declare them.
        for i in [RingId::Emergency as usize, RingId::Main as usize] {
            let tracker = &self.shared.drops[i];
            let capacity = self.shared.rings[i].capacity();
            self.consumers[i].drain(capacity, |e| tracker.note(e.seq));
        }
        let s = self.shared.stats();
        // Closed: no new notes start; wait out one still in progress (bounded).
        for _ in 0..100_000 {
            if self.note_gaps() {
                break;
            }
            std::thread::yield_now();
        }
        self.push_system(
            kind::SESSION_END,
            0,
            s.records_written as i64,
            s.dropped_main as i64,
            s.dropped_emergency,
        );
        self.write_pending_system();
        self.commit(false);
        if let Some(seg) = self.sink.current.take() {
            let consumed = [0, 1].map(|i| self.shared.rings[i].consumed());
            let file = seg.sync_handle();
            let records = seg.written();
            if seg.finish().is_err() {
                self.shared
                    .counters
                    .sink_errors
                    .fetch_add(1, Ordering::Relaxed);
            }
            self.sink.last_chain = self.sink.chainer.seal(&self.shared);
            // Sealed: the unused tail goes back to the filesystem (best effort).
            if let Ok(f) = &file {
                let _ = segment::release_unused_tail(f, records);
            }
            match file.and_then(|f| f.sync_data()) {
                Ok(()) => {
                    for (pos, value) in self.shared.counters.durable_pos.iter().zip(consumed) {
                        pos.store(value, Ordering::Release);
                    }
                }
                Err(_) => {
                    self.shared
                        .counters
                        .sink_errors
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        for f in std::mem::take(&mut self.sink.unsynced) {
            if f.sync_data().is_err() {
                self.shared
                    .counters
                    .sink_errors
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        self.lower_mark_at_close();
        self.sink.chainer.stop();
        self.shared.syncer.stop();
        if let Some(h) = self.sink.preparing.take() {
            if let Ok(Ok(p)) = h.join() {
                self.sink.next = Some(p);
            }
        }
        if let Some(next) = self.sink.next.take() {
            next.discard();
        }
        self.stats_file.publish(&self.shared.stats());
    }
}
