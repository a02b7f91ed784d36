//! Alerts: their kinds and contents, the evaluator thread that checks the three conditions each
//! tick with per-subject rate limiting, and the delivery thread that hands them to the sinks.
//!
//! # Alerts
//!
//! A background *evaluator* thread wakes every `tick`, collects, and checks three conditions:
//! latency breach (records above `breach_threshold_ns`, counted on the record path), buffer
//! pressure (an attached [`RingProbe`](super::RingProbe) reports a ring fill above the threshold) and regression
//! (the rolling-window p99.97 of all kill-switch operations, names starting with `kill_switch`
//! or `emergency_stop`, above its target). Each (kind, subject) pair raises at most one alert
//! per `rate_limit`; occurrences in between are accumulated and reported as the next alert's
//! `count`, so 100,000 breaches make a handful of alerts. A regression alert repeats only while
//! new kill-switch records keep the rolling p99.97 above its target. Alerts go through a bounded queue to a
//! separate *delivery* thread that calls the sinks, so a sink that blocks stalls only delivery
//! (the queue then fills and further alerts are counted in `alerts_dropped`), and a sink that
//! panics is caught.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::probe::RING_NAMES;
use super::recorder::{accumulating_histogram, Operation};
use super::window::{step_of, window_into};
use super::{lock, Inner, REGRESSION_QUANTILE};

/// The kind of an [`Alert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertKind {
    /// Records above the breach threshold.
    LatencyBreach,
    /// A ring above the buffer-pressure threshold.
    BufferPressure,
    /// Rolling p99.97 of kill-switch operations above its target.
    Regression,
}

impl AlertKind {
    /// Stable lower-case name (`latency_breach`, `buffer_pressure`, `regression`).
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::LatencyBreach => "latency_breach",
            AlertKind::BufferPressure => "buffer_pressure",
            AlertKind::Regression => "regression",
        }
    }

    pub(super) fn index(self) -> usize {
        match self {
            AlertKind::LatencyBreach => 0,
            AlertKind::BufferPressure => 1,
            AlertKind::Regression => 2,
        }
    }
}

/// One alert, as handed to the sinks.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// What fired.
    pub kind: AlertKind,
    /// Subject: the operation name, `"kill_switch"` for a regression, or the ring name
    /// (`"main"`/`"emergency"`) for buffer pressure.
    pub operation: String,
    /// Latency kinds: the worst latency in µs (breach: max breaching record since the last
    /// alert; regression: the rolling p99.97). Buffer pressure: the highest fill fraction seen.
    pub value: f64,
    /// The threshold crossed, in the unit of `value`.
    pub threshold: f64,
    /// Breach: records over the threshold since the previous alert of this operation.
    /// Regression: kill-switch records in the window above the target. Buffer pressure:
    /// evaluations that saw the ring above the threshold since the previous alert.
    pub count: u64,
    /// Human-readable one-line description.
    pub message: String,
}

/// A function receiving alerts on the delivery thread.
pub type AlertSink = Arc<dyn Fn(&Alert) + Send + Sync>;
/// The alert kinds, in [`Monitor::alerts_raised`](super::Monitor::alerts_raised) order.
pub(super) const ALERT_KINDS: [AlertKind; 3] = [
    AlertKind::LatencyBreach,
    AlertKind::BufferPressure,
    AlertKind::Regression,
];

/// Rate-limit state of one (kind, subject) that is not an operation.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) count: u64,
    pub(super) worst: f64,
    pub(super) last_alert: Option<Instant>,
}

pub(super) struct EvalState {
    pub(super) pressure: [Pending; 2],
    pub(super) regression: Pending,
    /// Kill-switch records since start when the last regression alert fired; `None` while the
    /// rolling p99.97 is within its target.
    pub(super) regression_seen: Option<u64>,
}

pub(super) fn signal_stop(inner: &Inner) {
    inner.stop.store(true, Ordering::Release);
    let (m, cv) = &inner.wake;
    *lock(m) = true;
    cv.notify_all();
    // Wakes the delivery thread (when the queue is full it is busy and sees `stop` anyway).
    let _ = inner.tx.try_send(None);
}

pub(super) fn evaluator_loop(inner: &Inner) {
    let tick = inner
        .config
        .tick
        .min(step_of(&inner.config))
        .max(Duration::from_millis(1));
    loop {
        {
            let (m, cv) = &inner.wake;
            let guard = lock(m);
            let (guard, _) = cv
                .wait_timeout_while(guard, tick, |woken| !*woken)
                .unwrap_or_else(|p| p.into_inner());
            drop(guard);
        }
        if inner.stop.load(Ordering::Acquire) {
            return;
        }
        evaluate(inner, Instant::now());
        inner.refill_pool();
    }
}

/// Blocks until an alert (no periodic wakeup); `signal_stop` sends a `None` to end it, and if
/// the queue was too full for that, it stops once the queued alerts are delivered.
pub(super) fn delivery_loop(inner: &Inner, rx: &Receiver<Option<Alert>>) {
    let deliver = |alert: &Alert| {
        let sinks: Vec<AlertSink> = inner
            .sinks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for sink in sinks {
            // A panicking sink must not take delivery (or anything else) down.
            let _ = catch_unwind(AssertUnwindSafe(|| sink(alert)));
        }
    };
    while let Ok(msg) = rx.recv() {
        if let Some(alert) = msg {
            deliver(&alert);
        }
        if inner.stop.load(Ordering::Acquire) {
            for alert in rx.try_iter().flatten() {
                deliver(&alert);
            }
            return;
        }
    }
}

pub(super) fn due(last: Option<Instant>, now: Instant, rate: Duration) -> bool {
    match last {
        None => true,
        Some(l) => now.saturating_duration_since(l) >= rate,
    }
}

pub(super) fn emit(inner: &Inner, alert: Alert) {
    inner.alerts[alert.kind.index()].fetch_add(1, Ordering::Relaxed);
    match inner.tx.try_send(Some(alert)) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            inner.alerts_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub(super) fn evaluate(inner: &Inner, now: Instant) {
    let cfg = &inner.config;
    let step = step_of(cfg);
    let rate = cfg.rate_limit;
    let ops: Vec<Arc<Operation>> = {
        let map = inner.ops.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = map.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    };
    let mut ks_window: Option<Histogram<u64>> = None;
    let mut ks_total = 0u64;
    for op in &ops {
        let mut acc = op.collect_and_rotate(step, now);
        let breach = if acc.breach_pending > 0 && due(acc.last_breach_alert, now, rate) {
            acc.last_breach_alert = Some(now);
            Some((
                std::mem::take(&mut acc.breach_pending),
                std::mem::take(&mut acc.breach_pending_max),
            ))
        } else {
            None
        };
        if op.kill_switch {
            let h = ks_window.get_or_insert_with(accumulating_histogram);
            window_into(&acc, cfg.window, now, h);
            ks_total += acc.total.len();
        }
        drop(acc);
        if let Some((count, worst)) = breach {
            let value = worst as f64 / 1e3;
            let threshold = cfg.breach_threshold_ns as f64 / 1e3;
            emit(
                inner,
                Alert {
                    kind: AlertKind::LatencyBreach,
                    operation: op.name.clone(),
                    value,
                    threshold,
                    count,
                    message: format!(
                        "{}: {count} record(s) over the {threshold:.1} us breach threshold, worst {value:.1} us",
                        op.name
                    ),
                },
            );
        }
    }
    let mut guard = lock(&inner.eval);
    let st = &mut *guard;
    // Regression: alert when the rolling p99.97 crosses the target, then (rate-limited) again
    // only while new kill-switch records keep it above: a single slow stop does not repeat an
    // alert for the whole window. Falling back under the target re-arms the first alert.
    let regressed = ks_window
        .filter(|h| !h.is_empty())
        .map(|h| (h.value_at_quantile(REGRESSION_QUANTILE), h))
        .filter(|(p, _)| *p > cfg.regression_target_ns);
    match regressed {
        None => st.regression_seen = None,
        Some((p, h)) => {
            let over = h.len() - h.count_between(0, cfg.regression_target_ns);
            let r = &mut st.regression;
            r.worst = p as f64 / 1e3;
            let fresh = st.regression_seen != Some(ks_total);
            if fresh && due(r.last_alert, now, rate) {
                r.last_alert = Some(now);
                st.regression_seen = Some(ks_total);
                let (value, target) = (r.worst, cfg.regression_target_ns as f64 / 1e3);
                emit(
                    inner,
                    Alert {
                        kind: AlertKind::Regression,
                        operation: "kill_switch".into(),
                        value,
                        threshold: target,
                        count: over,
                        message: format!(
                            "kill-switch rolling p99.97 {value:.2} us over its {target:.2} us target ({over} of {} records in the window above it)",
                            h.len()
                        ),
                    },
                );
            }
        }
    }
    // Buffer pressure.
    let probe = inner
        .probe
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Some(p) = probe {
        let fill = p.ring_fill();
        let dropped = p.dropped();
        for i in 0..2 {
            let pend = &mut st.pressure[i];
            if fill[i] > cfg.buffer_pressure_threshold {
                pend.count += 1;
                pend.worst = pend.worst.max(fill[i]);
            }
            if pend.count > 0 && due(pend.last_alert, now, rate) {
                pend.last_alert = Some(now);
                let count = std::mem::take(&mut pend.count);
                let worst = std::mem::take(&mut pend.worst);
                emit(
                    inner,
                    Alert {
                        kind: AlertKind::BufferPressure,
                        operation: RING_NAMES[i].into(),
                        value: worst,
                        threshold: cfg.buffer_pressure_threshold,
                        count,
                        message: format!(
                            "{} ring {:.0}% full (threshold {:.0}%), seen {count} time(s); {} record(s) dropped so far",
                            RING_NAMES[i],
                            worst * 100.0,
                            cfg.buffer_pressure_threshold * 100.0,
                            dropped[i]
                        ),
                    },
                );
            }
        }
    }
}
