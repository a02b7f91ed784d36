//! [`DropTracker`]: the lost sequence numbers of one ring, noted by producers on the cold
//! path and reported by the flusher as GAP records.
use super::*;

/// Lost sequence numbers of one ring since the flusher last reported them.
///
/// A producer notes a drop as `busy += 1; first = min; last = max; count += 1; busy -= 1`
/// (all SeqCst: this is the cold path). The flusher reports a GAP only from a snapshot no
/// note was in the middle of (see [`Flusher::note_gaps`]), so every seq a GAP counts lies in
/// its `[first, last]` and no count exceeds its range (docs/FORMAT.md, sequence accounting).
pub(super) struct DropTracker {
    pub(super) count: AtomicU64,
    pub(super) first: AtomicU64,
    pub(super) last: AtomicU64,
    /// Notes in progress.
    pub(super) busy: AtomicU64,
}

impl DropTracker {
    pub(super) fn new() -> DropTracker {
        DropTracker {
            count: AtomicU64::new(0),
            first: AtomicU64::new(u64::MAX),
            last: AtomicU64::new(0),
            busy: AtomicU64::new(0),
        }
    }

    /// Range first, count last, so a GAP that counts a seq always covers it.
    #[cold]
    pub(super) fn note(&self, seq: u64) {
        self.busy.fetch_add(1, Ordering::SeqCst);
        self.first.fetch_min(seq, Ordering::SeqCst);
        self.last.fetch_max(seq, Ordering::SeqCst);
        self.count.fetch_add(1, Ordering::SeqCst);
        self.busy.fetch_sub(1, Ordering::SeqCst);
    }
}
