//! The `flush*` waits of [`Logger`]: until the records appended before the call are
//! committed (durable, chained), for both rings or the emergency ring alone, and the
//! caller's [`Waiter`] between checks.
use super::*;

impl Logger {
    /// Waits until every record appended before the call is committed to the file
    /// (`durable`: and fdatasync'ed). `None` waits as long as it takes. True when reached.
    pub fn flush(&self, timeout: Option<Duration>, durable: bool) -> bool {
        self.flush_with(timeout, durable, false)
    }

    /// As [`Logger::flush`]; with `chained`, also waits until the `chain_head` and
    /// `chain_records` written in the segment header cover every record appended before the
    /// call (the chainer is nudged, so this takes about a millisecond, not a poll period).
    pub fn flush_with(&self, timeout: Option<Duration>, durable: bool, chained: bool) -> bool {
        if self.in_forked_child() {
            return false; // a forked child: nothing of this process will ever be flushed here
        }
        if let Some(direct) = &self.direct {
            return self.flush_direct(direct, durable, chained);
        }
        let s = &*self.shared;
        let targets = [s.rings[0].claimed(), s.rings[1].claimed()];
        let positions = if durable {
            &s.counters.durable_pos
        } else {
            &s.counters.committed_pos
        };
        let reached = || {
            positions[0].load(Ordering::Acquire) >= targets[0]
                && positions[1].load(Ordering::Acquire) >= targets[1]
        };
        let waiter = Waiter::new(timeout);
        loop {
            s.wake_flusher();
            if durable {
                s.sync_requested.store(true, Ordering::Release);
            }
            if reached() {
                break;
            }
            if waiter.expired() {
                return false;
            }
            if self.flusher_gone() {
                // Closed: close() drained everything that could be drained.
                if reached() {
                    break;
                }
                return false;
            }
            waiter.pause();
        }
        if !chained {
            return true;
        }
        // Our records end at or before this point (stored before `committed_pos`).
        let point = s.counters.committed_point.load(Ordering::Acquire);
        let chained_to = || s.counters.chained_point.load(Ordering::Acquire) >= point;
        let mut nudged = Instant::now();
        s.nudge_chainer();
        loop {
            if chained_to() {
                return true;
            }
            if waiter.expired() {
                return false;
            }
            if self.flusher_gone() {
                return chained_to();
            }
            if nudged.elapsed() >= Duration::from_micros(500) {
                s.nudge_chainer();
                nudged = Instant::now();
            }
            waiter.pause();
        }
    }

    /// Waits until every record appended to the EMERGENCY ring before the call is committed
    /// to the segment file (written, and covered by the header's `committed`: it survives
    /// `kill -9` from then on), without waiting for the main ring. False on timeout (a full
    /// disk keeps them in the ring) or in a forked child.
    pub fn flush_emergency(&self, timeout: Option<Duration>) -> bool {
        if self.in_forked_child() {
            return false;
        }
        if let Some(direct) = &self.direct {
            // Every returned record is committed already; `durable_kill_switch` asks for the
            // fdatasync a ring engine's syncer would do after kill-switch records.
            let durable = self.shared.config.durable_kill_switch;
            return self.flush_direct(direct, durable, false);
        }
        let s = &*self.shared;
        let target = s.rings[RingId::Emergency as usize].claimed();
        let pos = &s.counters.committed_pos[RingId::Emergency as usize];
        let waiter = Waiter::new(timeout);
        s.wake_flusher();
        loop {
            if pos.load(Ordering::Acquire) >= target {
                return true;
            }
            if waiter.expired() {
                return false;
            }
            if self.flusher_gone() {
                return pos.load(Ordering::Acquire) >= target;
            }
            waiter.pause();
        }
    }

    /// The direct engine's flush: everything returned is committed already (unless a write
    /// failed: retried here); `durable` syncs and `chained` hashes inline. No timeout applies:
    /// the work is one `pwrite`, one `fdatasync` and the hashing of what is not chained yet.
    fn flush_direct(&self, direct: &Mutex<Option<Direct>>, durable: bool, chained: bool) -> bool {
        let Ok(mut guard) = direct.lock() else {
            return false;
        };
        let Some(d) = guard.as_mut() else {
            // Closed: close() wrote, chained and synced everything it could.
            return true;
        };
        let f = &mut d.flusher;
        f.write_pending_system();
        let mut ok = f.commit(durable);
        if chained {
            f.sink.chainer.catch_up(&f.shared);
            let c = &f.shared.counters;
            ok &= c.chained_point.load(Ordering::Acquire)
                >= c.committed_point.load(Ordering::Acquire);
        }
        ok
    }

    fn flusher_gone(&self) -> bool {
        self.flusher.lock().map(|h| h.is_none()).unwrap_or(true)
    }
}

/// The wait of a caller in `flush*`: yields for the first 100 µs (the flusher answers within
/// its poll period, ~50 µs), then sleeps in 20 µs steps. A deadline past the end of `Instant`
/// (an absurd timeout) is no deadline.
struct Waiter {
    start: Instant,
    deadline: Option<Instant>,
}

impl Waiter {
    fn new(timeout: Option<Duration>) -> Waiter {
        let start = Instant::now();
        Waiter {
            start,
            deadline: timeout.and_then(|t| start.checked_add(t)),
        }
    }

    fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    fn pause(&self) {
        if self.start.elapsed() < Duration::from_micros(100) {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(20));
        }
    }
}
