//! The rolling window: an operation's since-start total, its current interval and the ring of
//! completed intervals, the rotation between them, and the window view over them.
//!
//! # Rolling window
//!
//! Collected data lands in the current interval histogram; every `window / WINDOW_SLOTS` the
//! interval is pushed onto a ring of at most [`WINDOW_SLOTS`] completed intervals (the evicted
//! one is reset and reused, so memory stops growing once the ring is full). The window view is
//! the current interval plus the completed intervals that ended less than `window` ago: it spans
//! between `window - step` and `window`, `step = window / WINDOW_SLOTS`.
use std::collections::VecDeque;
use std::sync::MutexGuard;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;

use super::recorder::{accumulating_histogram, Counters, Operation};
use super::{lock, MonitorConfig, WINDOW_SLOTS};

/// One completed interval of the rolling window.
pub(super) struct Slot {
    pub(super) hist: Histogram<u64>,
    pub(super) counters: Counters,
    pub(super) start: SystemTime,
    pub(super) end: SystemTime,
    pub(super) end_instant: Instant,
}

/// Off-path state of an operation, under [`Operation::acc`].
pub(super) struct Accum {
    /// Empty histogram shaped like a shard's, swapped in at collection.
    pub(super) spare: Histogram<u64>,
    pub(super) total: Histogram<u64>,
    pub(super) total_counters: Counters,
    pub(super) interval: Histogram<u64>,
    pub(super) interval_counters: Counters,
    pub(super) interval_start: SystemTime,
    pub(super) interval_start_instant: Instant,
    pub(super) ring: VecDeque<Slot>,
    /// Breaches collected but not yet reported in an alert, and their max.
    pub(super) breach_pending: u64,
    pub(super) breach_pending_max: u64,
    pub(super) last_breach_alert: Option<Instant>,
}

impl Operation {
    /// Collects, then closes the current interval if it is older than `step`.
    pub(super) fn collect_and_rotate(&self, step: Duration, now: Instant) -> MutexGuard<'_, Accum> {
        let mut acc = lock(&self.acc);
        self.collect(&mut acc);
        if now.saturating_duration_since(acc.interval_start_instant) >= step {
            let end = SystemTime::now();
            let mut slot = if acc.ring.len() >= WINDOW_SLOTS {
                let mut s = acc.ring.pop_front().expect("ring is full");
                s.hist.reset();
                s
            } else {
                Slot {
                    hist: accumulating_histogram(),
                    counters: Counters::default(),
                    start: end,
                    end,
                    end_instant: now,
                }
            };
            std::mem::swap(&mut slot.hist, &mut acc.interval);
            slot.counters = std::mem::take(&mut acc.interval_counters);
            slot.start = acc.interval_start;
            slot.end = end;
            slot.end_instant = now;
            acc.ring.push_back(slot);
            acc.interval_start = end;
            acc.interval_start_instant = now;
        }
        acc
    }
}

pub(super) fn window_into(
    acc: &Accum,
    window: Duration,
    now: Instant,
    h: &mut Histogram<u64>,
) -> Counters {
    let mut c = acc.interval_counters;
    let _ = h.add(&acc.interval);
    for slot in acc.ring.iter().rev() {
        if now.saturating_duration_since(slot.end_instant) >= window {
            break;
        }
        let _ = h.add(&slot.hist);
        c.add(&slot.counters);
    }
    c
}

pub(super) fn step_of(c: &MonitorConfig) -> Duration {
    (c.window / WINDOW_SLOTS as u32).max(Duration::from_millis(1))
}
