//! [`Sink`]: the current segment, the next one being prepared, and the retry state after
//! disk errors.
use super::*;

/// The current segment, the next one being prepared, and the retry state after disk errors.
pub(super) struct Sink {
    pub(super) current: Option<SegmentWriter>,
    pub(super) next: Option<PreparedSegment>,
    pub(super) preparing: Option<JoinHandle<io::Result<PreparedSegment>>>,
    pub(super) retry_at: Option<Instant>,
    pub(super) backoff: Duration,
    pub(super) segment_records: u64,
    pub(super) key: Option<Vec<u8>>,
    /// Index of the segment to prepare next.
    pub(super) next_index: u64,
    /// Final chain value of the last closed segment (the next one's `prev_chain`).
    pub(super) last_chain: ChainHead,
    /// Hashes the current segment (on its own thread, or inline).
    pub(super) chainer: Chaining,
    /// The log directory (new segments are created relative to it).
    pub(super) dir: Arc<LogDir>,
    /// Index of this session's first segment.
    pub(super) session_first: u64,
    /// Per current segment: a main-ring GAP, an emergency-ring GAP, a CLOCK record already
    /// took a slot of the reserve. Each takes at most one; later ones wait, merged.
    pub(super) reserve_used: [bool; 3],
    /// The direct engine's sink: the next segment is created by the caller at the roll (no
    /// preparer thread, no syncer).
    pub(super) inline: bool,
    /// The direct engine's rolled segments not yet fdatasync'ed: synced by the next durable
    /// flush or close, not by the caller that happened to fill the segment.
    pub(super) unsynced: Vec<std::fs::File>,
}

impl Sink {
    /// Slots at the end of each segment that only emergency and system records may use, so a
    /// full disk (no next segment) still leaves room for kill-switch records.
    fn reserve(&self) -> u64 {
        (self.segment_records / 16).min(1024)
    }

    /// True once the current segment has no room left outside the reserve (or none at all).
    pub(super) fn in_reserve(&self) -> bool {
        self.current
            .as_ref()
            .is_none_or(|c| c.remaining() <= self.reserve())
    }

    /// Starts reserving the next segment once the current one is half full: early enough
    /// that a roll never waits (fallocate takes milliseconds, half a segment is ~50 ms at
    /// full rate), late enough that an idle logger holds one segment of disk, not two.
    pub(super) fn prepare_next(&mut self, shared: &Shared) {
        if self.inline {
            return; // the direct engine creates its next segment at the roll
        }
        if self.next.is_some()
            || self.preparing.is_some()
            || self.retry_at.is_some_and(|t| Instant::now() < t)
            || self
                .current
                .as_ref()
                .is_some_and(|c| c.remaining() > c.capacity() / 2)
        {
            return;
        }
        let dir = Arc::clone(&self.dir);
        let (index, records) = (self.next_index, self.segment_records);
        match std::thread::Builder::new()
            .name("ksa-prepare".into())
            .spawn(move || {
                yield_to_callers();
                PreparedSegment::create_in(&dir, index, records)
            }) {
            Ok(h) => self.preparing = Some(h),
            Err(_) => self.failed(shared),
        }
    }

    fn failed(&mut self, shared: &Shared) {
        shared.counters.sink_errors.fetch_add(1, Ordering::Relaxed);
        self.backoff =
            (self.backoff * 2).clamp(Duration::from_millis(1), Duration::from_millis(200));
        self.retry_at = Some(Instant::now() + self.backoff);
    }

    /// The direct engine's next segment, created by the caller that needs it (fallocate: a
    /// few ms, once a segment); after a failure, not again before the backoff has passed.
    fn prepare_inline(&mut self, shared: &Shared) {
        if self.next.is_some() || self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        match PreparedSegment::create_in(&self.dir, self.next_index, self.segment_records) {
            Ok(p) => {
                self.next = Some(p);
                self.backoff = Duration::ZERO;
                self.retry_at = None;
            }
            Err(_) => self.failed(shared),
        }
    }

    /// Collects a finished preparation.
    pub(super) fn poll_prepared(&mut self, shared: &Shared) {
        if self.preparing.as_ref().is_some_and(|h| h.is_finished()) {
            match self.preparing.take().map(|h| h.join()) {
                Some(Ok(Ok(p))) => {
                    self.next = Some(p);
                    self.backoff = Duration::ZERO;
                    self.retry_at = None;
                }
                _ => self.failed(shared),
            }
        }
        self.prepare_next(shared);
    }

    /// Room for records of `ring` (system records count as emergency), rolling over to the
    /// prepared segment when the current one is full. Main-ring records never take the last
    /// `reserve()` slots, so a full disk (no next segment) still has room for kill switches.
    /// Once the logger is stopping no kill switch can arrive any more, so main-ring records
    /// may use the reserve too, all but the last [`SHUTDOWN_SLOTS`] (kept for the GAP and
    /// SESSION_END records that declare what could not be written).
    pub(super) fn room(&mut self, shared: &Shared, emergency: bool, seq_hint: u64) -> u64 {
        for _ in 0..2 {
            let remaining = self.current.as_ref().map(|c| c.remaining()).unwrap_or(0);
            let usable = if emergency {
                remaining
            } else if shared.stop.load(Ordering::Acquire) {
                remaining.saturating_sub(SHUTDOWN_SLOTS)
            } else {
                remaining.saturating_sub(self.reserve())
            };
            if usable > 0 {
                // Bounded by the writer's staging buffer (0 while the disk refuses a write).
                let accepts = self.current.as_mut().map(|c| c.accepts()).unwrap_or(0);
                return usable.min(accepts);
            }
            if self.inline {
                self.prepare_inline(shared);
                if self.next.is_none() {
                    return 0;
                }
            } else if self.next.is_none() {
                self.poll_prepared(shared);
                return 0;
            }
            self.roll(shared, seq_hint);
        }
        0
    }

    fn roll(&mut self, shared: &Shared, seq_hint: u64) {
        let Some(next) = self.next.take() else { return };
        if let Some(current) = self.current.take() {
            let file = current.sync_handle();
            if current.finish().is_err() {
                shared.counters.sink_errors.fetch_add(1, Ordering::Relaxed);
            }
            // Waits for the chainer to hash what it has not yet (it runs ~1 ms behind).
            self.last_chain = self.chainer.seal(shared);
            match file {
                Ok(file) if self.inline => self.unsynced.push(file),
                Ok(file) => shared.syncer.post(file, None),
                Err(_) => {
                    shared.counters.sink_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let mark = shared.seq_reserved.load(Ordering::Acquire);
        match next.activate(seq_hint, mark, &self.last_chain, self.key.as_deref()) {
            Ok(w) => {
                self.chainer.open(&w, &self.last_chain, shared);
                self.reserve_used = [false; 3];
                self.current = Some(w);
                self.next_index += 1;
                shared.counters.segments.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => self.failed(shared),
        }
        self.prepare_next(shared);
    }
}
