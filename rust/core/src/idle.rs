//! How the engine's background threads wait for work: a back-off idle strategy and a waker.
//!
//! A background thread (the flusher, the chainer) runs passes; after a pass that found nothing
//! to do it calls [`Backoff::idle`], which spins a little, then yields, then *parks* with
//! growing timeouts (`min_park` doubling up to the caller's cap). This is Agrona's
//! `BackoffIdleStrategy`: a burst of work is followed by a few cheap retries (the next record
//! is often microseconds away), and a quiet thread costs a handful of wakeups a second instead
//! of one every poll period.
//!
//! A producer with something urgent (a kill-switch record) calls [`Waker::wake_if_parked`]:
//! one `SeqCst` fence and one load of the `parked` flag, and an `unpark` (a futex wake) only
//! when the consumer is actually parked. A producer with something that may wait (a trade)
//! never calls it; the consumer's park timeout bounds how long such a record waits.
//!
//! # Protocol (no lost wakeup)
//! The consumer stores `parked = true`, issues a `SeqCst` fence, re-checks its work sources
//! (`ready`), and only then parks. The producer publishes its work (a Release store into the
//! ring), issues a `SeqCst` fence, and loads `parked`. By the fences' total order, either the
//! producer sees `parked == true` (and unparks: `std::thread::Thread::unpark` leaves a token
//! when the consumer has not reached `park_timeout` yet, so the park returns at once), or the
//! consumer's re-check sees the work (and does not park).
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::Duration;

/// How a background thread waits between passes that found nothing to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdleStrategy {
    /// Spin, yield, then park with growing timeouts; woken by producers of urgent work
    /// (default: an idle engine costs well under 1 % of a core).
    #[default]
    Backoff,
    /// Never park: poll every `emergency_poll` (the engine before back-off; for users with a
    /// dedicated core, at the cost measured in BENCHMARKS.md).
    BusyPoll,
}

/// One thread's wake-up point: producers unpark it only while it is parked.
#[derive(Debug, Default)]
pub struct Waker {
    /// True while the owner thread is parked or about to park (see the module protocol).
    parked: AtomicBool,
    /// The owner thread, set once by [`Waker::register_current`].
    thread: OnceLock<Thread>,
    /// Times the owner parked (a park that returned by timeout or by a wake).
    parks: AtomicU64,
    /// Times a producer unparked the owner.
    wakes: AtomicU64,
}

impl Waker {
    /// A waker with no owner yet (wakes are no-ops until [`Waker::register_current`]).
    pub fn new() -> Waker {
        Waker::default()
    }

    /// Makes the calling thread the one this waker wakes (first call wins).
    pub fn register_current(&self) {
        let _ = self.thread.set(std::thread::current());
    }

    /// True while the owner is parked (or about to park). One relaxed load: for producers
    /// that wake only under a further condition (a ring past a threshold) and can afford to
    /// miss a wake now and then (the owner's park timeout bounds the delay).
    #[inline]
    pub fn is_parked(&self) -> bool {
        self.parked.load(Ordering::Relaxed)
    }

    /// After publishing urgent work: wakes the owner if it is parked. Costs one fence and one
    /// load when it is not (the common case while the engine is busy).
    #[inline]
    pub fn wake_if_parked(&self) {
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::Relaxed) {
            self.wake();
        }
    }

    /// Wakes the owner unconditionally (cold paths: flush, close, control messages).
    #[cold]
    pub fn wake(&self) {
        if let Some(t) = self.thread.get() {
            if self.parked.load(Ordering::Relaxed) {
                self.wakes.fetch_add(1, Ordering::Relaxed);
            }
            t.unpark();
        }
    }

    /// Called by the owner: parks for at most `timeout` unless `ready()` (re-checked after
    /// announcing the park) says work arrived meanwhile. True when it parked.
    pub fn park(&self, timeout: Duration, ready: impl FnOnce() -> bool) -> bool {
        self.parked.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if ready() {
            self.parked.store(false, Ordering::Relaxed);
            return false;
        }
        self.parks.fetch_add(1, Ordering::Relaxed);
        std::thread::park_timeout(timeout);
        self.parked.store(false, Ordering::Relaxed);
        true
    }

    /// Times the owner parked so far.
    pub fn parks(&self) -> u64 {
        self.parks.load(Ordering::Relaxed)
    }

    /// Times a producer woke the owner while it was parked, so far.
    pub fn wakes(&self) -> u64 {
        self.wakes.load(Ordering::Relaxed)
    }
}

/// Agrona-style back-off: `spins` busy spins, then `yields` `sched_yield`s, then parks of
/// `min_park`, doubling at each idle pass up to the cap the caller passes (its next deadline).
#[derive(Debug, Clone)]
pub struct Backoff {
    spins: u32,
    yields: u32,
    min_park: Duration,
    max_park: Duration,
    /// Idle passes since the last pass that did work.
    idle_passes: u32,
    park: Duration,
}

impl Backoff {
    /// A back-off of `spins` spins, `yields` yields, then parks from `min_park` to `max_park`.
    pub fn new(spins: u32, yields: u32, min_park: Duration, max_park: Duration) -> Backoff {
        let min_park = min_park.max(Duration::from_micros(1));
        Backoff {
            spins,
            yields,
            min_park,
            max_park: max_park.max(min_park),
            idle_passes: 0,
            park: min_park,
        }
    }

    /// The pass did work: start over with spinning.
    pub fn reset(&mut self) {
        self.idle_passes = 0;
        self.park = self.min_park;
    }

    /// The pass found nothing to do: spin, yield or park (at most `cap`, and at most the
    /// current park step) on `waker`, which producers can cut short. `ready` is the
    /// consumer's own re-check of its work sources (see the module protocol).
    pub fn idle(&mut self, waker: &Waker, cap: Duration, ready: impl FnOnce() -> bool) {
        self.idle_passes = self.idle_passes.saturating_add(1);
        if self.idle_passes <= self.spins {
            std::hint::spin_loop();
        } else if self.idle_passes <= self.spins + self.yields {
            std::thread::yield_now();
        } else {
            let timeout = self.park.min(cap).min(self.max_park);
            waker.park(timeout, ready);
            self.park = (self.park * 2).min(self.max_park);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_wake_cuts_a_long_park_short() {
        let waker = Arc::new(Waker::new());
        let w = Arc::clone(&waker);
        let t = std::thread::spawn(move || {
            w.register_current();
            let start = Instant::now();
            while !w.park(Duration::from_secs(30), || false) {}
            start.elapsed()
        });
        while !waker.is_parked() {
            std::thread::yield_now();
        }
        waker.wake_if_parked();
        let parked_for = t.join().unwrap();
        assert!(parked_for < Duration::from_secs(30), "{parked_for:?}");
        assert_eq!(waker.wakes(), 1);
    }

    #[test]
    fn ready_work_is_never_slept_on() {
        let waker = Waker::new();
        waker.register_current();
        assert!(!waker.park(Duration::from_secs(30), || true));
        assert!(!waker.is_parked());
        assert_eq!(waker.parks(), 0);
    }

    #[test]
    fn backoff_spins_then_yields_then_parks_growing_to_the_cap() {
        let waker = Waker::new();
        waker.register_current();
        let mut b = Backoff::new(2, 2, Duration::from_micros(10), Duration::from_micros(40));
        for _ in 0..4 {
            b.idle(&waker, Duration::from_secs(1), || false);
        }
        assert_eq!(waker.parks(), 0, "spins and yields first");
        b.idle(&waker, Duration::from_secs(1), || false);
        assert_eq!(waker.parks(), 1);
        assert_eq!(b.park, Duration::from_micros(20));
        for _ in 0..5 {
            b.idle(&waker, Duration::from_secs(1), || false);
        }
        assert_eq!(b.park, Duration::from_micros(40), "capped at max_park");
        b.reset();
        b.idle(&waker, Duration::from_secs(1), || false);
        assert_eq!(waker.parks(), 6, "reset: spins again");
    }

    /// Many wakes racing a consumer that parks for a long time: every item a producer
    /// publishes is seen within far less than the park timeout (no lost wakeup).
    #[test]
    fn no_lost_wakeup_under_races() {
        let waker = Arc::new(Waker::new());
        let published = Arc::new(AtomicU64::new(0));
        let (w, p) = (Arc::clone(&waker), Arc::clone(&published));
        let consumer = std::thread::spawn(move || {
            w.register_current();
            let mut seen = 0;
            let start = Instant::now();
            while seen < 2_000 {
                let now = p.load(Ordering::Acquire);
                if now > seen {
                    seen = now;
                    continue;
                }
                w.park(Duration::from_secs(20), || p.load(Ordering::Acquire) > seen);
            }
            start.elapsed()
        });
        for _ in 0..2_000 {
            published.fetch_add(1, Ordering::Release);
            waker.wake_if_parked();
            if published.load(Ordering::Relaxed).is_multiple_of(64) {
                std::thread::yield_now();
            }
        }
        let took = consumer.join().unwrap();
        assert!(
            took < Duration::from_secs(20),
            "a wakeup was lost: {took:?}"
        );
    }
}
