//! HdrHistogram latency monitor: the [`Monitor`] that owns the per-operation histograms, its
//! settings ([`MonitorConfig`]), the summaries it hands out ([`Analysis`]) and the background
//! threads' lifetime.
//!
//! The parts live in submodules: `recorder` (an [`Operation`]'s sharded histograms and the
//! record path), `table` (the lock-free name lookup), `window` (collection into the since-start
//! total and the rolling window), `alerts` (evaluation, rate limiting and delivery of
//! [`Alert`]s), `probe` (the audit logger's rings as seen by the monitor, [`RingProbe`]) and
//! `export` (HdrHistogram interval log and Prometheus text).
//!
//! # Nothing on a stop's path is created on first use
//! A new operation needs its shard histograms (about 220 KB each, plus their page faults): about
//! a millisecond, which used to land on the first `emergency_stop` of a process. So the monitor
//! creates the operations the kill switch records ([`PRECREATED_OPERATIONS`], pages touched)
//! when it is created (they stay out of listings and exports until their first record), and
//! keeps a small pool of allocated histogram sets that the first use of any other name takes
//! (refilled by the evaluator thread): a first record costs microseconds, not a millisecond.
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;

mod alerts;
mod export;
mod probe;
mod recorder;
mod table;
#[cfg(test)]
mod tests;
mod window;

pub use alerts::{Alert, AlertKind, AlertSink};
pub use probe::{ManualProbe, RingProbe, RING_NAMES};
pub use recorder::Operation;

use alerts::{delivery_loop, evaluate, evaluator_loop, signal_stop, EvalState, Pending};
use recorder::{accumulating_histogram, Counters, OpParts};
use table::{OpMap, OpTable};
use window::{step_of, window_into};

/// Highest latency a recording histogram tracks (60 s, in ns); larger values are clamped to it
/// and counted in `clamped`.
pub const HIGHEST_TRACKABLE_NS: u64 = 60_000_000_000;
/// Significant decimal digits kept by every histogram (relative error below 0.1 %).
pub const SIGNIFICANT_DIGITS: u8 = 3;
/// Number of completed intervals the rolling window keeps.
pub const WINDOW_SLOTS: usize = 12;
/// The quantiles reported by [`Analysis`] and the Prometheus summaries, in order.
pub const QUANTILES: [f64; 6] = [0.5, 0.9, 0.99, 0.999, 0.9997, 0.9999];
/// Quantile used by the regression alert (p99.97).
pub const REGRESSION_QUANTILE: f64 = 0.9997;

/// Whether `name` is a kill-switch operation: it starts with `kill_switch` or `emergency_stop`.
pub fn is_kill_switch_operation(name: &str) -> bool {
    name.starts_with("kill_switch") || name.starts_with("emergency_stop")
}

/// Operations the kill switch records on every stop: created with the monitor, so the first
/// stop of a process finds them ready. Hidden from listings and exports until recorded.
pub const PRECREATED_OPERATIONS: [&str; 3] = ["emergency_stop", "kill_switch_audit", "trade_audit"];

/// Pre-built histogram sets kept for the first use of new operation names.
const POOL_SIZE: usize = 4;

/// Settings of a [`Monitor`]. Latencies in nanoseconds.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// A single record strictly above this is a latency breach (default 20 µs).
    pub breach_threshold_ns: u64,
    /// Rolling p99.97 of kill-switch operations above this raises a regression alert
    /// (default 10 µs).
    pub regression_target_ns: u64,
    /// A ring fill strictly above this fraction raises a buffer-pressure alert (default 0.8).
    pub buffer_pressure_threshold: f64,
    /// Minimum time between two alerts of one kind for one subject (default 1 s).
    pub rate_limit: Duration,
    /// Length of the rolling window (default 60 s).
    pub window: Duration,
    /// How often the evaluator collects and checks (default 100 ms).
    pub tick: Duration,
    /// Capacity of the queue between evaluator and delivery thread (default 1024).
    pub alert_queue: usize,
    /// Shards per operation; 0 picks `available_parallelism` clamped to 2..=8.
    pub shards: usize,
    /// Start the evaluator and delivery threads (default true). Without them, call
    /// [`Monitor::evaluate`] and [`Monitor::take_alerts`] by hand (tests).
    pub background: bool,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            breach_threshold_ns: 20_000,
            regression_target_ns: 10_000,
            buffer_pressure_threshold: 0.8,
            rate_limit: Duration::from_secs(1),
            window: Duration::from_secs(60),
            tick: Duration::from_millis(100),
            alert_queue: 1024,
            shards: 0,
            background: true,
        }
    }
}

/// Latency summary of one operation (or of all kill-switch operations); the default is the
/// summary of nothing (all zero).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Analysis {
    /// Records summarised.
    pub count: u64,
    /// Exact sum of the recorded latencies, ns.
    pub sum_ns: u64,
    /// Arithmetic mean (exact: `sum_ns / count`), ns; 0 when empty.
    pub mean_ns: f64,
    /// Smallest recorded value (histogram precision), ns.
    pub min_ns: u64,
    /// Largest recorded value (histogram precision), ns.
    pub max_ns: u64,
    /// Values at [`QUANTILES`], ns (highest equivalent value of the bucket).
    pub quantiles_ns: [u64; QUANTILES.len()],
    /// Records above the breach threshold.
    pub breaches: u64,
    /// Records above [`HIGHEST_TRACKABLE_NS`], recorded as that value.
    pub clamped: u64,
}

impl Analysis {
    fn from_parts(h: &Histogram<u64>, c: Counters) -> Self {
        let count = h.len();
        let mut quantiles_ns = [0; QUANTILES.len()];
        if count > 0 {
            for (q, v) in QUANTILES.iter().zip(quantiles_ns.iter_mut()) {
                *v = h.value_at_quantile(*q);
            }
        }
        Analysis {
            count,
            sum_ns: c.sum,
            mean_ns: if count > 0 {
                c.sum as f64 / count as f64
            } else {
                0.0
            },
            min_ns: if count > 0 { h.min() } else { 0 },
            max_ns: if count > 0 { h.max() } else { 0 },
            quantiles_ns,
            breaches: c.breaches,
            clamped: c.clamped,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; if something did, the data is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Inner {
    config: MonitorConfig,
    shards: usize,
    ops: RwLock<OpMap>,
    table: OpTable,
    probe: RwLock<Option<Arc<dyn RingProbe>>>,
    sinks: RwLock<Vec<AlertSink>>,
    eval: Mutex<EvalState>,
    start_wall: SystemTime,
    /// Alerts to the delivery thread; `None` only wakes it to see `stop`.
    tx: SyncSender<Option<Alert>>,
    /// Alerts queued when no background delivery thread runs (`background: false`).
    rx: Mutex<Option<Receiver<Option<Alert>>>>,
    alerts: [AtomicU64; 3],
    alerts_dropped: AtomicU64,
    stop: AtomicBool,
    wake: (Mutex<bool>, Condvar),
    /// Pre-built histogram sets for new operations ([`POOL_SIZE`], refilled by the evaluator).
    pool: Mutex<Vec<OpParts>>,
}

impl Inner {
    /// Tops the pool up to [`POOL_SIZE`], building outside the lock.
    fn refill_pool(&self) {
        while lock(&self.pool).len() < POOL_SIZE {
            let parts = OpParts::new(self.shards, false);
            lock(&self.pool).push(parts);
        }
    }

    fn parts(&self) -> OpParts {
        lock(&self.pool)
            .pop()
            .unwrap_or_else(|| OpParts::new(self.shards, false))
    }
}

/// The latency monitor. Cheap to share (`Arc<Monitor>`); all methods take `&self`.
pub struct Monitor {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Default for Monitor {
    fn default() -> Self {
        Self::new(MonitorConfig::default())
    }
}

impl Monitor {
    /// Creates a monitor; with `config.background` it starts the evaluator and delivery
    /// threads (named `ksa-monitor-eval` and `ksa-monitor-alerts`).
    pub fn new(config: MonitorConfig) -> Self {
        let shards = if config.shards == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .clamp(2, 8)
        } else {
            config.shards.clamp(1, 64)
        };
        let (tx, rx) = mpsc::sync_channel(config.alert_queue.max(1));
        let background = config.background;
        let inner = Arc::new(Inner {
            config,
            shards,
            ops: RwLock::new(OpMap::default()),
            table: OpTable::new(),
            probe: RwLock::new(None),
            sinks: RwLock::new(Vec::new()),
            eval: Mutex::new(EvalState {
                pressure: Default::default(),
                regression: Pending::default(),
                regression_seen: None,
            }),
            start_wall: SystemTime::now(),
            tx,
            rx: Mutex::new(None),
            alerts: Default::default(),
            alerts_dropped: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            wake: (Mutex::new(false), Condvar::new()),
            pool: Mutex::new(Vec::with_capacity(POOL_SIZE)),
        });
        {
            let mut ops = inner.ops.write().unwrap_or_else(|p| p.into_inner());
            for name in PRECREATED_OPERATIONS {
                let op = Arc::new(Operation::new(
                    name,
                    inner.config.breach_threshold_ns,
                    OpParts::new(shards, true),
                    false,
                ));
                inner.table.insert(&op);
                ops.insert(name.to_owned(), op);
            }
        }
        inner.refill_pool();
        let mut threads = Vec::new();
        if background {
            let ev = Arc::clone(&inner);
            if let Ok(h) = std::thread::Builder::new()
                .name("ksa-monitor-eval".into())
                .spawn(move || evaluator_loop(&ev))
            {
                threads.push(h);
            }
            let dl = Arc::clone(&inner);
            if let Ok(h) = std::thread::Builder::new()
                .name("ksa-monitor-alerts".into())
                .spawn(move || delivery_loop(&dl, &rx))
            {
                threads.push(h);
            }
        } else {
            *lock(&inner.rx) = Some(rx);
        }
        Monitor {
            inner,
            threads: Mutex::new(threads),
        }
    }

    /// The configuration the monitor runs with.
    pub fn config(&self) -> &MonitorConfig {
        &self.inner.config
    }

    /// The operation called `name`, created on first use (from the pool of pre-built
    /// histograms: microseconds). Asking for it makes it listed even before its first record.
    pub fn operation(&self, name: &str) -> Arc<Operation> {
        let op = self.get_or_create(name);
        op.visible.store(true, Ordering::Relaxed);
        op
    }

    fn get_or_create(&self, name: &str) -> Arc<Operation> {
        if let Some(op) = self.inner.table.get(name) {
            return Arc::clone(op);
        }
        let mut ops = self.inner.ops.write().unwrap_or_else(|p| p.into_inner());
        match ops.entry(name.to_owned()) {
            Entry::Occupied(e) => Arc::clone(e.get()),
            Entry::Vacant(e) => {
                let op = Arc::new(Operation::new(
                    name,
                    self.inner.config.breach_threshold_ns,
                    self.inner.parts(),
                    true,
                ));
                self.inner.table.insert(&op);
                Arc::clone(e.insert(op))
            }
        }
    }

    /// The operation called `name` if it is listed (recorded or asked for).
    fn visible_operation(&self, name: &str) -> Option<Arc<Operation>> {
        let ops = self.inner.ops.read().unwrap_or_else(|p| p.into_inner());
        ops.get(name)
            .filter(|op| op.visible.load(Ordering::Relaxed))
            .cloned()
    }

    /// Records `latency_ns` for the operation called `name`: a lock-free table lookup (one
    /// hash, a few loads), then [`Operation::record`].
    #[inline]
    pub fn record(&self, name: &str, latency_ns: u64) {
        match self.inner.table.get(name) {
            Some(op) => op.record(latency_ns),
            None => self.get_or_create(name).record(latency_ns),
        }
    }

    /// Names of the operations seen so far, sorted.
    pub fn operation_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .inner
            .ops
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, op)| op.visible.load(Ordering::Relaxed))
            .map(|(name, _)| name.clone())
            .collect();
        v.sort();
        v
    }

    fn ops_sorted(&self) -> Vec<Arc<Operation>> {
        let mut v: Vec<Arc<Operation>> = self
            .inner
            .ops
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|op| op.visible.load(Ordering::Relaxed))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn step(&self) -> Duration {
        step_of(&self.inner.config)
    }

    /// A copy of the histogram of `name` (since start, or over the rolling window) and its
    /// counters; `None` for an unknown operation.
    pub fn histogram(&self, name: &str, window: bool) -> Option<Histogram<u64>> {
        let op = self.visible_operation(name)?;
        Some(self.snapshot(&[op], window).0)
    }

    fn snapshot(&self, ops: &[Arc<Operation>], window: bool) -> (Histogram<u64>, Counters) {
        let now = Instant::now();
        let mut h = accumulating_histogram();
        let mut c = Counters::default();
        for op in ops {
            let acc = op.collect_and_rotate(self.step(), now);
            if window {
                c.add(&window_into(&acc, self.inner.config.window, now, &mut h));
            } else {
                let _ = h.add(&acc.total);
                c.add(&acc.total_counters);
            }
        }
        (h, c)
    }

    /// Analysis of one operation since start (or over the window); `None` if never recorded.
    pub fn analysis(&self, name: &str, window: bool) -> Option<Analysis> {
        let op = self.visible_operation(name)?;
        let (h, c) = self.snapshot(&[op], window);
        Some(Analysis::from_parts(&h, c))
    }

    /// Analysis over all kill-switch operations merged (empty if there are none).
    pub fn kill_switch_analysis(&self, window: bool) -> Analysis {
        let ops: Vec<_> = self
            .ops_sorted()
            .into_iter()
            .filter(|o| o.kill_switch)
            .collect();
        let (h, c) = self.snapshot(&ops, window);
        Analysis::from_parts(&h, c)
    }

    /// Attaches (replacing any previous) the probe whose rings the monitor watches.
    pub fn attach_probe(&self, probe: Arc<dyn RingProbe>) {
        *self.inner.probe.write().unwrap_or_else(|p| p.into_inner()) = Some(probe);
    }

    /// Detaches the probe, if any.
    pub fn detach_probe(&self) {
        *self.inner.probe.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Adds a sink called (on the delivery thread) with every alert.
    pub fn add_alert_sink(&self, sink: AlertSink) {
        self.inner
            .sinks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(sink);
    }

    /// Alerts raised so far, per kind, in [`AlertKind`] order
    /// (breach, buffer pressure, regression).
    pub fn alerts_raised(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.inner.alerts[i].load(Ordering::Relaxed))
    }

    /// Alerts lost because the delivery queue was full (a slow sink).
    pub fn alerts_dropped(&self) -> u64 {
        self.inner.alerts_dropped.load(Ordering::Relaxed)
    }

    /// Runs one evaluation now (what the evaluator thread does every tick).
    pub fn evaluate(&self) {
        evaluate(&self.inner, Instant::now());
        self.inner.refill_pool();
    }

    /// Without background threads: the alerts queued so far (none with background threads,
    /// where the delivery thread consumes them).
    pub fn take_alerts(&self) -> Vec<Alert> {
        let rx = lock(&self.inner.rx);
        match rx.as_ref() {
            Some(rx) => rx.try_iter().flatten().collect(),
            None => Vec::new(),
        }
    }

    /// Stops and joins the background threads (idempotent). Dropping the monitor stops them
    /// without joining.
    pub fn shutdown(&self) {
        signal_stop(&self.inner);
        let threads = std::mem::take(&mut *lock(&self.threads));
        for t in threads {
            let _ = t.join();
        }
    }

    /// Stops the background threads and waits at most `timeout` for them (a sink may be
    /// blocked); returns whether all ended. Threads still running are left to end on their own.
    pub fn shutdown_timeout(&self, timeout: Duration) -> bool {
        signal_stop(&self.inner);
        let deadline = Instant::now() + timeout;
        let mut threads = lock(&self.threads);
        loop {
            let (done, running): (Vec<_>, Vec<_>) = std::mem::take(&mut *threads)
                .into_iter()
                .partition(|t| t.is_finished());
            for t in done {
                let _ = t.join();
            }
            *threads = running;
            if threads.is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                threads.clear(); // detach: they exit after the blocked sink returns
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        // Signal only: joining here could deadlock a binding that drops the monitor while a
        // sink waits for the same lock (e.g. the GIL). The threads exit within one tick.
        signal_stop(&self.inner);
    }
}
