//! Order gate: precomputed per-scope trading state, read lock-free on the order path.
//!
//! Two pieces the binding builds the gate from:
//! - [`RcuCell`]: a pointer to an immutable snapshot. Readers `load` it (one Acquire load, no
//!   lock, no allocation, no write to shared memory); a writer `publish`es a new boxed snapshot
//!   (one AcqRel swap). A replaced snapshot is *retired*, not freed, until the cell is dropped:
//!   a reader may still be reading it, and without an epoch scheme the only proof that none is
//!   is `&mut self`. State changes are rare (a halt, a reset), so the retired list stays short.
//! - [`DenialLimiter`]: counts denials and says, at most once per interval, how many to audit.

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::Mutex;

/// A published, immutable `T`, replaced as a whole.
///
/// Protocol: `current` always points to a live `Box<T>` made by `Box::into_raw`. Only
/// `publish` writes it (swap, AcqRel: the new snapshot's contents happen-before any reader
/// that sees the pointer); `load` reads it (Acquire). Every pointer ever swapped out goes to
/// `retired` and is freed in `Drop` only, so a `&T` from `load` stays valid for as long as the
/// `&self` it borrows from.
pub struct RcuCell<T> {
    current: AtomicPtr<T>,
    retired: Mutex<Vec<RetiredPtr<T>>>,
}

struct RetiredPtr<T>(*mut T);

// SAFETY: a RetiredPtr is an owned Box<T> in raw form, only touched under the mutex or in Drop;
// sending it between threads is sending the Box, sound when T: Send.
unsafe impl<T: Send> Send for RetiredPtr<T> {}

// SAFETY: the cell hands out `&T` to any thread (needs T: Sync) and moves boxed T between
// threads through publish/Drop (needs T: Send); the pointers themselves are managed as above.
unsafe impl<T: Send + Sync> Sync for RcuCell<T> {}
// SAFETY: as for Sync: the cell owns its boxed snapshots.
unsafe impl<T: Send + Sync> Send for RcuCell<T> {}

impl<T> RcuCell<T> {
    /// A cell holding `value`.
    pub fn new(value: T) -> Self {
        Self {
            current: AtomicPtr::new(Box::into_raw(Box::new(value))),
            retired: Mutex::new(Vec::new()),
        }
    }

    /// The current snapshot.
    #[inline]
    pub fn load(&self) -> &T {
        let p = self.current.load(Ordering::Acquire);
        // SAFETY: `p` came from Box::into_raw (new/publish) and is freed only in Drop, which
        // takes &mut self; the returned reference borrows &self, so it cannot outlive it.
        unsafe { &*p }
    }

    /// Replaces the snapshot; readers see either the old or the new one, never a mix.
    pub fn publish(&self, value: T) {
        let new = Box::into_raw(Box::new(value));
        let old = self.current.swap(new, Ordering::AcqRel);
        let mut retired = match self.retired.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        retired.push(RetiredPtr(old));
    }

    /// How many replaced snapshots are kept until the cell is dropped.
    pub fn retired(&self) -> usize {
        match self.retired.lock() {
            Ok(g) => g.len(),
            Err(poisoned) => poisoned.into_inner().len(),
        }
    }
}

impl<T> Drop for RcuCell<T> {
    fn drop(&mut self) {
        let cur = *self.current.get_mut();
        // SAFETY: &mut self: no reader holds a reference; `cur` came from Box::into_raw and is
        // freed exactly once, here.
        drop(unsafe { Box::from_raw(cur) });
        let retired = match self.retired.get_mut() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        for RetiredPtr(p) in retired.drain(..) {
            // SAFETY: each retired pointer came from Box::into_raw, was swapped out exactly once
            // and is freed exactly once, here, with no reader left (&mut self).
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

/// Counts denials and rate-limits their audit records.
///
/// `total` only grows. `next_ns` is the earliest time the next audit may happen; the thread
/// that moves it forward (compare-exchange) owns that audit and reports the denials since the
/// previous one (`audited` keeps the total already reported, moved forward with fetch_max so a
/// late auditor never reports a count twice).
pub struct DenialLimiter {
    total: AtomicU64,
    audited: AtomicU64,
    next_ns: AtomicU64,
    interval_ns: u64,
}

impl DenialLimiter {
    /// At most one audit per `interval_ns`.
    pub fn new(interval_ns: u64) -> Self {
        Self {
            total: AtomicU64::new(0),
            audited: AtomicU64::new(0),
            next_ns: AtomicU64::new(0),
            interval_ns,
        }
    }

    /// Counts one denial at `now_ns` (any monotonic clock); returns the number of denials to
    /// write in an audit record when one is due, else None.
    #[inline]
    pub fn deny(&self, now_ns: u64) -> Option<u64> {
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        let next = self.next_ns.load(Ordering::Relaxed);
        if now_ns < next {
            return None;
        }
        let due = now_ns.saturating_add(self.interval_ns);
        if self
            .next_ns
            .compare_exchange(next, due, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        let prev = self.audited.fetch_max(total, Ordering::Relaxed);
        let n = total.saturating_sub(prev);
        (n > 0).then_some(n)
    }

    /// Denials counted so far.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn rcu_readers_see_whole_snapshots_while_a_writer_publishes() {
        let cell = Arc::new(RcuCell::new(vec![0u64; 16]));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (cell, stop) = (Arc::clone(&cell), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut seen = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let v = cell.load();
                        assert!(v.iter().all(|&x| x == v[0]), "torn snapshot");
                        assert!(v[0] >= seen, "went back in time");
                        seen = v[0];
                    }
                    seen
                })
            })
            .collect();
        for i in 1..=2_000u64 {
            cell.publish(vec![i; 16]);
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() <= 2_000);
        }
        assert_eq!(cell.load()[0], 2_000);
        assert_eq!(cell.retired(), 2_000);
    }

    #[test]
    fn denial_limiter_counts_every_denial_and_audits_at_most_once_per_interval() {
        let l = DenialLimiter::new(100);
        assert_eq!(l.deny(1_000), Some(1));
        for t in 1_001..1_050 {
            assert_eq!(l.deny(t), None);
        }
        assert_eq!(l.deny(1_100), Some(50));
        assert_eq!(l.deny(1_150), None);
        assert_eq!(l.total(), 52);
    }

    #[test]
    fn denial_limiter_loses_no_count_across_threads() {
        let l = Arc::new(DenialLimiter::new(1));
        let reported = Arc::new(AtomicU64::new(0));
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let (l, reported) = (Arc::clone(&l), Arc::clone(&reported));
                std::thread::spawn(move || {
                    for t in 0..10_000u64 {
                        if let Some(n) = l.deny(t * 8 + i) {
                            reported.fetch_add(n, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(l.total(), 80_000);
        // what was not reported yet is reported by the next audit
        let rest = l.deny(u64::MAX / 2).unwrap_or(0);
        assert_eq!(reported.load(Ordering::Relaxed) + rest, 80_001);
    }
}
