//! HdrHistogram latency monitor: per-operation histograms, rolling window, alerts, exports.
//!
//! # Recording
//!
//! Each operation (a name such as `"kill_switch_audit"`) owns a small array of *shards*; a
//! shard is a [`CachePadded`] `Mutex` around a fixed-range [`Histogram`] (1 ns ..
//! [`HIGHEST_TRACKABLE_NS`], 3 significant digits) plus plain counters (sum, breaches, clamped).
//! A thread uses the shard of the CPU it runs on (`sched_getcpu`, which glibc answers from the
//! rseq area with one load), so the mutex is uncontended unless a thread is preempted while
//! holding it: a record is one uncontended lock/unlock (two atomic instructions), one
//! `saturating_record` and one compare. The histogram is pre-sized for its whole range, so after
//! the operation's first use nothing on the record path allocates; a value above the range is
//! clamped to it and counted (`clamped`), never a panic.
//!
//! Why not hdrhistogram's `sync::Recorder`/`SyncHistogram`: a recorder is owned by one thread
//! (`&mut self`), which fits poorly with arbitrary Python threads, and `SyncHistogram::refresh`
//! waits until every live recorder has recorded again (or a timeout), so an idle recorder stalls
//! every snapshot. Per-CPU mutex shards cost about the same (see `benches/monitor.rs`) and a
//! reader never waits for a recorder beyond a pointer swap.
//!
//! Names are resolved by a lock-free open-addressing table (write-once slots), so recording by
//! name costs one hash and a string compare more than recording through an [`Operation`] handle.
//!
//! # Nothing on a stop's path is created on first use
//! A new operation needs its shard histograms (about 220 KB each, plus their page faults): about
//! a millisecond, which used to land on the first `emergency_stop` of a process. So the monitor
//! creates the operations the kill switch records ([`PRECREATED_OPERATIONS`], pages touched)
//! when it is created (they stay out of listings and exports until their first record), and
//! keeps a small pool of allocated histogram sets that the first use of any other name takes
//! (refilled by the evaluator thread): a first record costs microseconds, not a millisecond.
//!
//! Breach detection on the record path is exactly one compare (`latency > threshold`); the
//! rare branch bumps shard-local counters (under the lock already held).
//!
//! # Collecting (never blocks recorders for long)
//!
//! Readers never scan a live shard. [`Operation`]'s collector swaps each non-empty shard's
//! histogram with an empty spare of the same shape (a pointer swap under the shard lock), then
//! merges the swapped-out data into the since-start total and the current interval *outside*
//! the lock. The background evaluator collects every `tick`; a snapshot request collects first,
//! so every analysis sees every record that returned before it started.
//!
//! # Rolling window
//!
//! Collected data lands in the current interval histogram; every `window / WINDOW_SLOTS` the
//! interval is pushed onto a ring of at most [`WINDOW_SLOTS`] completed intervals (the evicted
//! one is reset and reused, so memory stops growing once the ring is full). The window view is
//! the current interval plus the completed intervals that ended less than `window` ago: it spans
//! between `window - step` and `window`, `step = window / WINDOW_SLOTS`.
//!
//! # Alerts
//!
//! A background *evaluator* thread wakes every `tick`, collects, and checks three conditions:
//! latency breach (records above `breach_threshold_ns`, counted on the record path), buffer
//! pressure (an attached [`RingProbe`] reports a ring fill above the threshold) and regression
//! (the rolling-window p99.97 of all kill-switch operations, names starting with `kill_switch`
//! or `emergency_stop`, above its target). Each (kind, subject) pair raises at most one alert
//! per `rate_limit`; occurrences in between are accumulated and reported as the next alert's
//! `count`, so 100,000 breaches make a handful of alerts. A regression alert repeats only while
//! new kill-switch records keep the rolling p99.97 above its target. Alerts go through a bounded queue to a
//! separate *delivery* thread that calls the sinks, so a sink that blocks stalls only delivery
//! (the queue then fills and further alerts are counted in `alerts_dropped`), and a sink that
//! panics is caught.
use rustc_hash::FxHasher;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_utils::CachePadded;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;

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

/// Reports the fill and drop counters of an audit logger's two rings.
///
/// Index 0 is the main ring, index 1 the emergency (kill-switch) ring. Called from the
/// monitor's evaluator thread and from [`Monitor::prometheus_text`], never from a record path.
pub trait RingProbe: Send + Sync {
    /// Fill of each ring as a fraction of its capacity, `0.0..=1.0`.
    fn ring_fill(&self) -> [f64; 2];
    /// Records dropped by each ring since the logger started.
    fn dropped(&self) -> [u64; 2];
    /// Disk errors the logger's sink met (full disk, EIO) since it started.
    fn sink_errors(&self) -> u64 {
        0
    }
}

/// A [`RingProbe`] whose values are set by hand (atomics): for a logger that cannot be probed
/// directly (a writer outside this crate, which pushes its numbers) and for tests.
#[derive(Debug, Default)]
pub struct ManualProbe {
    fill_bits: [AtomicU64; 2],
    dropped: [AtomicU64; 2],
}

impl ManualProbe {
    /// A probe reporting empty rings and no drops.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the values the probe reports (fills are clamped to `0.0..=1.0`).
    pub fn set(&self, fill: [f64; 2], dropped: [u64; 2]) {
        for i in 0..2 {
            let f = if fill[i].is_nan() {
                0.0
            } else {
                fill[i].clamp(0.0, 1.0)
            };
            self.fill_bits[i].store(f.to_bits(), Ordering::Relaxed);
            self.dropped[i].store(dropped[i], Ordering::Relaxed);
        }
    }
}

impl RingProbe for ManualProbe {
    fn ring_fill(&self) -> [f64; 2] {
        [0, 1].map(|i| f64::from_bits(self.fill_bits[i].load(Ordering::Relaxed)))
    }
    fn dropped(&self) -> [u64; 2] {
        [0, 1].map(|i| self.dropped[i].load(Ordering::Relaxed))
    }
}

/// Operations the kill switch records on every stop: created with the monitor, so the first
/// stop of a process finds them ready. Hidden from listings and exports until recorded.
pub const PRECREATED_OPERATIONS: [&str; 3] = ["emergency_stop", "kill_switch_audit", "trade_audit"];

/// Pre-built histogram sets kept for the first use of new operation names.
const POOL_SIZE: usize = 4;

/// Names of the two rings, in [`RingProbe`] index order.
pub const RING_NAMES: [&str; 2] = ["main", "emergency"];

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

    fn index(self) -> usize {
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

/// Plain counters kept beside a histogram.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counters {
    sum: u64,
    breaches: u64,
    clamped: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.sum = self.sum.wrapping_add(o.sum);
        self.breaches += o.breaches;
        self.clamped += o.clamped;
    }
}

/// Recording state of one shard. Only touched under its mutex.
struct Shard {
    /// Fixed range 1..=HIGHEST_TRACKABLE_NS, never resized: recording never allocates.
    hist: Histogram<u64>,
    counters: Counters,
    /// Largest breaching value since the last collection.
    breach_max: u64,
}

fn recording_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_TRACKABLE_NS, SIGNIFICANT_DIGITS)
        .expect("constant bounds are valid")
}

fn accumulating_histogram() -> Histogram<u64> {
    // Auto-resizing: grows to the largest value actually seen; only touched off the record path.
    Histogram::new(SIGNIFICANT_DIGITS).expect("constant sigfig is valid")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; if something did, the data is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One completed interval of the rolling window.
struct Slot {
    hist: Histogram<u64>,
    counters: Counters,
    start: SystemTime,
    end: SystemTime,
    end_instant: Instant,
}

/// Off-path state of an operation, under [`Operation::acc`].
struct Accum {
    /// Empty histogram shaped like a shard's, swapped in at collection.
    spare: Histogram<u64>,
    total: Histogram<u64>,
    total_counters: Counters,
    interval: Histogram<u64>,
    interval_counters: Counters,
    interval_start: SystemTime,
    interval_start_instant: Instant,
    ring: VecDeque<Slot>,
    /// Breaches collected but not yet reported in an alert, and their max.
    breach_pending: u64,
    breach_pending_max: u64,
    last_breach_alert: Option<Instant>,
}

/// One measured operation. Get it with [`Monitor::operation`] and keep it to record without the
/// name lookup.
pub struct Operation {
    name: String,
    kill_switch: bool,
    /// Listed and exported: set by its first record or an explicit [`Monitor::operation`];
    /// false only for a pre-created operation never used yet.
    visible: AtomicBool,
    /// Copy of the monitor's breach threshold, clamped to `HIGHEST_TRACKABLE_NS`, so that the
    /// clamp check can live inside the breach branch.
    threshold_ns: u64,
    shard_mask: usize,
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    acc: Mutex<Accum>,
}

static NEXT_THREAD_INDEX: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_INDEX: usize = NEXT_THREAD_INDEX.fetch_add(1, Ordering::Relaxed);
}

/// Which shard the calling thread uses: the CPU it runs on (glibc reads it from the rseq area,
/// one load), so that threads running at the same instant use different shards; a thread index
/// where the CPU is unknown.
#[inline]
fn shard_hint() -> usize {
    // Miri cannot call into libc's sched_getcpu.
    #[cfg(all(target_os = "linux", not(miri)))]
    {
        // SAFETY: sched_getcpu has no preconditions; it returns -1 on failure.
        let cpu = unsafe { libc::sched_getcpu() };
        if cpu >= 0 {
            return cpu as usize;
        }
    }
    THREAD_INDEX.try_with(|i| *i).unwrap_or(0)
}

impl std::fmt::Debug for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operation")
            .field("name", &self.name)
            .finish()
    }
}

/// The expensive part of an [`Operation`]: its recording histograms, allocated and with every
/// page touched, so that neither creating the operation nor its first records fault.
struct OpParts {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    spare: Histogram<u64>,
}

impl OpParts {
    /// With `prefault`, every page of the counts is written now (about 0.5 ms and the full
    /// ~220 KB per histogram resident): for the operations a stop records. Without, pages
    /// come from calloc's zero pages and fault on the first record that lands in them
    /// (about a microsecond each), and an operation only ever holds the pages it used.
    fn new(shards: usize, prefault: bool) -> OpParts {
        let prefaulted = || {
            let mut h = recording_histogram();
            if prefault {
                h.reset(); // writes every count: the zero pages become real
            }
            h
        };
        OpParts {
            shards: (0..shards.next_power_of_two())
                .map(|_| {
                    CachePadded::new(Mutex::new(Shard {
                        hist: prefaulted(),
                        counters: Counters::default(),
                        breach_max: 0,
                    }))
                })
                .collect(),
            spare: prefaulted(),
        }
    }
}

impl Operation {
    fn new(name: &str, threshold_ns: u64, parts: OpParts, visible: bool) -> Self {
        let now = SystemTime::now();
        Operation {
            name: name.to_owned(),
            kill_switch: is_kill_switch_operation(name),
            visible: AtomicBool::new(visible),
            threshold_ns: threshold_ns.min(HIGHEST_TRACKABLE_NS),
            shard_mask: parts.shards.len() - 1,
            shards: parts.shards,
            acc: Mutex::new(Accum {
                spare: parts.spare,
                total: accumulating_histogram(),
                total_counters: Counters::default(),
                interval: accumulating_histogram(),
                interval_counters: Counters::default(),
                interval_start: now,
                interval_start_instant: Instant::now(),
                ring: VecDeque::with_capacity(WINDOW_SLOTS),
                breach_pending: 0,
                breach_pending_max: 0,
                last_breach_alert: None,
            }),
        }
    }

    /// The operation's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it counts as a kill-switch operation ([`is_kill_switch_operation`]).
    pub fn is_kill_switch(&self) -> bool {
        self.kill_switch
    }

    /// Records one latency in nanoseconds. Never allocates, never panics.
    #[inline]
    pub fn record(&self, latency_ns: u64) {
        let shard = &self.shards[shard_hint() & self.shard_mask];
        let mut s = lock(shard);
        s.hist.saturating_record(latency_ns);
        s.counters.sum = s.counters.sum.wrapping_add(latency_ns);
        if latency_ns > self.threshold_ns {
            s.counters.breaches += 1;
            if latency_ns > s.breach_max {
                s.breach_max = latency_ns;
            }
            if latency_ns > HIGHEST_TRACKABLE_NS {
                s.counters.clamped += 1;
            }
        }
        drop(s);
        if !self.visible.load(Ordering::Relaxed) {
            self.visible.store(true, Ordering::Relaxed);
        }
    }

    /// Moves everything recorded so far into the accumulators. Holds each shard lock only for
    /// a swap.
    fn collect(&self, acc: &mut Accum) {
        for shard in self.shards.iter() {
            let (counters, breach_max) = {
                let mut s = lock(shard);
                if s.hist.is_empty() {
                    continue;
                }
                std::mem::swap(&mut s.hist, &mut acc.spare);
                let c = std::mem::take(&mut s.counters);
                let m = std::mem::take(&mut s.breach_max);
                (c, m)
            };
            // Neither add can fail: the accumulators auto-resize.
            let _ = acc.total.add(&acc.spare);
            let _ = acc.interval.add(&acc.spare);
            acc.spare.reset();
            acc.total_counters.add(&counters);
            acc.interval_counters.add(&counters);
            acc.breach_pending += counters.breaches;
            acc.breach_pending_max = acc.breach_pending_max.max(breach_max);
        }
    }

    /// Collects, then closes the current interval if it is older than `step`.
    fn collect_and_rotate(&self, step: Duration, now: Instant) -> MutexGuard<'_, Accum> {
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

fn window_into(acc: &Accum, window: Duration, now: Instant, h: &mut Histogram<u64>) -> Counters {
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

/// FxHash (`rustc-hash`): operation names are short and trusted, and SipHash would double
/// the by-name record cost.
fn hash_name(name: &str) -> u64 {
    let mut h = FxHasher::default();
    h.write(name.as_bytes());
    h.finish()
}

/// Slots of the lock-free lookup table ([`OpTable`]).
const TABLE_SLOTS: usize = 512;

/// Lock-free name -> operation lookup for the by-name record path: open addressing with linear
/// probing over write-once slots. Invariant: slots are only ever filled (under
/// `Inner::ops`' write lock), never emptied, and a name is stored in the first empty slot of its
/// probe sequence, so a lookup that meets an empty slot knows the name is absent. Names beyond
/// the table's capacity live only in `Inner::ops` (the slow path).
struct OpTable {
    slots: Box<[std::sync::OnceLock<Arc<Operation>>]>,
}

impl OpTable {
    fn new() -> Self {
        OpTable {
            slots: (0..TABLE_SLOTS)
                .map(|_| std::sync::OnceLock::new())
                .collect(),
        }
    }

    #[inline]
    fn get(&self, name: &str) -> Option<&Arc<Operation>> {
        let h = hash_name(name) as usize;
        for i in 0..TABLE_SLOTS {
            match self.slots[(h.wrapping_add(i)) & (TABLE_SLOTS - 1)].get() {
                None => return None,
                Some(op) if op.name == name => return Some(op),
                Some(_) => {}
            }
        }
        None
    }

    /// Caller holds the ops write lock and has checked that `op` is absent.
    fn insert(&self, op: &Arc<Operation>) {
        let h = hash_name(&op.name) as usize;
        // Keep a quarter free so that misses stay short.
        for i in 0..TABLE_SLOTS * 3 / 4 {
            let slot = &self.slots[(h.wrapping_add(i)) & (TABLE_SLOTS - 1)];
            if slot.get().is_none() {
                let _ = slot.set(Arc::clone(op));
                return;
            }
        }
    }
}

type OpMap = HashMap<String, Arc<Operation>, BuildHasherDefault<FxHasher>>;

/// Rate-limit state of one (kind, subject) that is not an operation.
#[derive(Default)]
struct Pending {
    count: u64,
    worst: f64,
    last_alert: Option<Instant>,
}

struct EvalState {
    pressure: [Pending; 2],
    regression: Pending,
    /// Kill-switch records since start when the last regression alert fired; `None` while the
    /// rolling p99.97 is within its target.
    regression_seen: Option<u64>,
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

    /// Writes an HdrHistogram interval log (V2 deflate-compressed histograms, one line per
    /// histogram tagged `Tag=<operation>`; characters the format forbids in a tag become `_`).
    ///
    /// With `window == false` each operation contributes one interval: its since-start
    /// histogram, from the monitor's start until now. With `window == true` it contributes its
    /// retained completed intervals and the current one, in time order. Timestamps are relative
    /// to the `#[BaseTime: ...]` header (the monitor's start); values are ns and the max column
    /// is in ms (`MaxValueDivisor` 1e6), as Java's HistogramLogProcessor expects.
    pub fn write_hlog<W: io::Write>(&self, out: &mut W, window: bool) -> io::Result<()> {
        let base = self.inner.start_wall;
        let mut serializer = V2DeflateSerializer::new();
        let mut builder = IntervalLogWriterBuilder::new();
        builder
            .add_comment("killswitch-audit latency monitor: values in nanoseconds")
            .add_comment("[Histogram log format version 1.3]")
            .with_start_time(base)
            .with_base_time(base)
            .with_max_value_divisor(1e6);
        let mut writer = builder.begin_log_with(out, &mut serializer)?;
        writer.write_comment(
            "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"",
        )?;
        let rel = |t: SystemTime| t.duration_since(base).unwrap_or_default();
        let now = Instant::now();
        let mut lines: Vec<(Duration, Duration, String, Histogram<u64>)> = Vec::new();
        for op in self.ops_sorted() {
            let tag: String = op
                .name
                .chars()
                .map(|c| {
                    if matches!(c, ',' | '\r' | '\n' | ' ') {
                        '_'
                    } else {
                        c
                    }
                })
                .collect();
            let acc = op.collect_and_rotate(self.step(), now);
            if window {
                for slot in acc.ring.iter() {
                    if now.saturating_duration_since(slot.end_instant) >= self.inner.config.window {
                        continue;
                    }
                    let start = rel(slot.start);
                    let len = slot.end.duration_since(slot.start).unwrap_or_default();
                    lines.push((start, len, tag.clone(), slot.hist.clone()));
                }
                let start = rel(acc.interval_start);
                let len = SystemTime::now()
                    .duration_since(acc.interval_start)
                    .unwrap_or_default();
                lines.push((start, len, tag, acc.interval.clone()));
            } else {
                let len = SystemTime::now().duration_since(base).unwrap_or_default();
                lines.push((Duration::ZERO, len, tag, acc.total.clone()));
            }
        }
        lines.sort_by_key(|l| l.0);
        for (start, len, tag, h) in &lines {
            writer
                .write_histogram(h, *start, *len, Tag::new(tag))
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        Ok(())
    }

    /// Prometheus text exposition (format 0.0.4).
    ///
    /// - `killswitch_audit_latency_seconds{operation=...,quantile=...}`: a summary; the
    ///   quantiles (0.5 .. 0.9999, including 0.9997) are over the rolling window, `_count` and
    ///   `_sum` since start (monotonic, as Prometheus expects).
    /// - `killswitch_audit_latency_max_seconds{operation}` (gauge, window),
    ///   `killswitch_audit_latency_breaches_total{operation}`,
    ///   `killswitch_audit_latency_clamped_total{operation}` (counters, since start).
    /// - `killswitch_audit_alerts_total{kind}`, `killswitch_audit_alerts_dropped_total`.
    /// - With a probe attached: `killswitch_audit_ring_fill_ratio{ring}` (gauge) and
    ///   `killswitch_audit_ring_dropped_total{ring}` (counter).
    pub fn prometheus_text(&self) -> String {
        let mut s = String::new();
        let now = Instant::now();
        struct Row {
            name: String,
            q: [u64; QUANTILES.len()],
            wmax: u64,
            count: u64,
            total: Counters,
        }
        let rows: Vec<Row> = self
            .ops_sorted()
            .into_iter()
            .map(|op| {
                let acc = op.collect_and_rotate(self.step(), now);
                let mut w = accumulating_histogram();
                window_into(&acc, self.inner.config.window, now, &mut w);
                let a = Analysis::from_parts(&w, Counters::default());
                Row {
                    name: escape_label(&op.name),
                    q: a.quantiles_ns,
                    wmax: a.max_ns,
                    count: acc.total.len(),
                    total: acc.total_counters,
                }
            })
            .collect();
        let _ = writeln!(
            s,
            "# HELP killswitch_audit_latency_seconds Operation latency: quantiles over the rolling window, count and sum since start."
        );
        let _ = writeln!(s, "# TYPE killswitch_audit_latency_seconds summary");
        for r in &rows {
            for (q, v) in QUANTILES.iter().zip(r.q.iter()) {
                let _ = writeln!(
                    s,
                    "killswitch_audit_latency_seconds{{operation=\"{}\",quantile=\"{}\"}} {}",
                    r.name,
                    q,
                    Secs(*v)
                );
            }
            let _ = writeln!(
                s,
                "killswitch_audit_latency_seconds_sum{{operation=\"{}\"}} {}",
                r.name,
                Secs(r.total.sum)
            );
            let _ = writeln!(
                s,
                "killswitch_audit_latency_seconds_count{{operation=\"{}\"}} {}",
                r.name, r.count
            );
        }
        family(
            &mut s,
            "killswitch_audit_latency_max_seconds",
            "Largest latency in the rolling window.",
            "gauge",
            "operation",
            rows.iter().map(|r| (&r.name, Secs(r.wmax))),
        );
        family(
            &mut s,
            "killswitch_audit_latency_breaches_total",
            "Records above the latency breach threshold since start.",
            "counter",
            "operation",
            rows.iter().map(|r| (&r.name, r.total.breaches)),
        );
        family(
            &mut s,
            "killswitch_audit_latency_clamped_total",
            "Records above the histogram range (60 s), recorded as 60 s.",
            "counter",
            "operation",
            rows.iter().map(|r| (&r.name, r.total.clamped)),
        );
        family(
            &mut s,
            "killswitch_audit_latency_breach_threshold_seconds",
            "Latency breach threshold.",
            "gauge",
            "",
            [("", Secs(self.inner.config.breach_threshold_ns))],
        );
        let raised = self.alerts_raised();
        family(
            &mut s,
            "killswitch_audit_alerts_total",
            "Alerts raised, by kind.",
            "counter",
            "kind",
            ALERT_KINDS.iter().map(|k| (k.as_str(), raised[k.index()])),
        );
        family(
            &mut s,
            "killswitch_audit_alerts_dropped_total",
            "Alerts lost because the delivery queue was full.",
            "counter",
            "",
            [("", self.alerts_dropped())],
        );
        let probe = self
            .inner
            .probe
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(p) = probe {
            let (fill, dropped) = (p.ring_fill(), p.dropped());
            family(
                &mut s,
                "killswitch_audit_ring_fill_ratio",
                "Fill of the audit logger's rings (0..1).",
                "gauge",
                "ring",
                RING_NAMES.iter().zip(fill),
            );
            family(
                &mut s,
                "killswitch_audit_ring_dropped_total",
                "Records dropped by the audit logger's rings.",
                "counter",
                "ring",
                RING_NAMES.iter().zip(dropped),
            );
            family(
                &mut s,
                "killswitch_audit_sink_errors_total",
                "Disk errors of the audit logger's sink (full disk, EIO); it retries with backoff.",
                "counter",
                "",
                [("", p.sink_errors())],
            );
        }
        s
    }
}

/// The alert kinds, in [`Monitor::alerts_raised`] order.
const ALERT_KINDS: [AlertKind; 3] = [
    AlertKind::LatencyBreach,
    AlertKind::BufferPressure,
    AlertKind::Regression,
];

/// Nanoseconds shown as seconds in Prometheus' float syntax.
struct Secs(u64);

impl std::fmt::Display for Secs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:e}", self.0 as f64 / 1e9)
    }
}

/// Writes one metric family: `# HELP`, `# TYPE`, then one `name{label="value"} v` line per
/// sample (no braces when `label` is empty). Label values must already be escaped.
fn family<L: std::fmt::Display, V: std::fmt::Display>(
    s: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    label: &str,
    samples: impl IntoIterator<Item = (L, V)>,
) {
    let _ = writeln!(s, "# HELP {name} {help}");
    let _ = writeln!(s, "# TYPE {name} {kind}");
    for (l, v) in samples {
        let _ = if label.is_empty() {
            writeln!(s, "{name} {v}")
        } else {
            writeln!(s, "{name}{{{label}=\"{l}\"}} {v}")
        };
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        // Signal only: joining here could deadlock a binding that drops the monitor while a
        // sink waits for the same lock (e.g. the GIL). The threads exit within one tick.
        signal_stop(&self.inner);
    }
}

fn escape_label(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

fn step_of(c: &MonitorConfig) -> Duration {
    (c.window / WINDOW_SLOTS as u32).max(Duration::from_millis(1))
}

fn signal_stop(inner: &Inner) {
    inner.stop.store(true, Ordering::Release);
    let (m, cv) = &inner.wake;
    *lock(m) = true;
    cv.notify_all();
    // Wakes the delivery thread (when the queue is full it is busy and sees `stop` anyway).
    let _ = inner.tx.try_send(None);
}

fn evaluator_loop(inner: &Inner) {
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
fn delivery_loop(inner: &Inner, rx: &Receiver<Option<Alert>>) {
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

fn due(last: Option<Instant>, now: Instant, rate: Duration) -> bool {
    match last {
        None => true,
        Some(l) => now.saturating_duration_since(l) >= rate,
    }
}

fn emit(inner: &Inner, alert: Alert) {
    inner.alerts[alert.kind.index()].fetch_add(1, Ordering::Relaxed);
    match inner.tx.try_send(Some(alert)) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            inner.alerts_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn evaluate(inner: &Inner, now: Instant) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn manual(cfg: MonitorConfig) -> Monitor {
        Monitor::new(MonitorConfig {
            background: false,
            ..cfg
        })
    }

    #[test]
    fn quantiles_match_exact_values_within_precision() {
        let m = manual(MonitorConfig::default());
        let mut vals: Vec<u64> = (1..=100_000u64).map(|i| i * 37 % 1_000_003 + 100).collect();
        for v in &vals {
            m.record("op", *v);
        }
        vals.sort_unstable();
        let a = m.analysis("op", false).unwrap();
        assert_eq!(a.count, vals.len() as u64);
        assert_eq!(a.sum_ns, vals.iter().sum::<u64>());
        for (q, got) in QUANTILES.iter().zip(a.quantiles_ns.iter()) {
            let idx = ((q * vals.len() as f64).ceil() as usize).max(1) - 1;
            let exact = vals[idx] as f64;
            assert!(
                (*got as f64 - exact).abs() <= exact * 1e-3 + 1.0,
                "q{q}: {got} vs {exact}"
            );
        }
    }

    #[test]
    fn more_operations_than_the_lookup_table_holds() {
        let m = manual(MonitorConfig::default());
        for round in 0..3u64 {
            for i in 0..(TABLE_SLOTS + 100) {
                m.record(&format!("op{i}"), 1_000 + round);
            }
        }
        assert_eq!(m.operation_names().len(), TABLE_SLOTS + 100);
        for i in [0, TABLE_SLOTS - 1, TABLE_SLOTS + 99] {
            assert_eq!(m.analysis(&format!("op{i}"), false).unwrap().count, 3);
        }
    }

    #[test]
    fn clamps_and_counts_values_out_of_range() {
        let m = manual(MonitorConfig::default());
        m.record("op", u64::MAX);
        m.record("op", 0);
        let a = m.analysis("op", false).unwrap();
        assert_eq!(a.count, 2);
        assert_eq!(a.clamped, 1);
        assert_eq!(a.breaches, 1);
        assert!(a.max_ns >= HIGHEST_TRACKABLE_NS);
    }

    #[test]
    fn eight_threads_lose_no_count() {
        let m = Arc::new(manual(MonitorConfig::default()));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let m = Arc::clone(&m);
                std::thread::spawn(move || {
                    let op = m.operation("shared");
                    for i in 0..50_000u64 {
                        op.record(100 + (i + t) % 1000);
                        if i % 10_000 == 0 {
                            // Concurrent snapshots must not lose records either.
                            let _ = m.analysis("shared", false);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(m.analysis("shared", false).unwrap().count, 400_000);
    }

    #[test]
    fn breach_alerts_are_exact_and_rate_limited() {
        let m = manual(MonitorConfig {
            breach_threshold_ns: 20_000,
            rate_limit: Duration::from_secs(3600),
            ..Default::default()
        });
        m.record("trade_audit", 20_000); // equal: not a breach
        m.evaluate();
        assert!(m.take_alerts().is_empty());
        for _ in 0..100_000 {
            m.record("trade_audit", 25_000);
        }
        m.evaluate();
        for _ in 0..10 {
            m.record("trade_audit", 30_000);
        }
        m.evaluate();
        let alerts = m.take_alerts();
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].kind, AlertKind::LatencyBreach);
        assert_eq!(alerts[0].count, 100_000);
        assert_eq!(m.analysis("trade_audit", false).unwrap().breaches, 100_010);
    }

    #[test]
    fn pending_breaches_are_reported_once_the_rate_limit_passes() {
        let m = manual(MonitorConfig {
            rate_limit: Duration::from_millis(50),
            ..Default::default()
        });
        m.record("x", 1_000_000);
        m.evaluate();
        m.record("x", 2_000_000);
        m.record("x", 3_000_000);
        m.evaluate();
        std::thread::sleep(Duration::from_millis(60));
        m.evaluate();
        let a = m.take_alerts();
        assert_eq!(a.iter().map(|a| a.count).collect::<Vec<_>>(), vec![1, 2]);
        assert!((a[1].value - 3000.0).abs() < 5.0);
    }

    #[test]
    fn regression_alert_on_kill_switch_p9997() {
        let m = manual(MonitorConfig {
            regression_target_ns: 10_000,
            breach_threshold_ns: 1_000_000_000,
            rate_limit: Duration::from_millis(1),
            ..Default::default()
        });
        for _ in 0..1000 {
            m.record("trade_audit", 50_000); // not a kill-switch operation
            m.record("kill_switch_audit", 1_000);
        }
        m.evaluate();
        assert!(m.take_alerts().is_empty());
        for _ in 0..10 {
            m.record("emergency_stop", 15_000);
        }
        m.evaluate();
        let a = m.take_alerts();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].kind, AlertKind::Regression);
        assert_eq!(a[0].count, 10);
        assert_eq!(m.kill_switch_analysis(false).count, 1010);
        // Still regressed, but nothing new: no repeat however long we wait.
        std::thread::sleep(Duration::from_millis(5));
        m.evaluate();
        assert!(m.take_alerts().is_empty());
        // A new slow kill-switch record while regressed: alert again.
        m.record("kill_switch_audit", 12_000);
        m.evaluate();
        let a = m.take_alerts();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].count, 11);
    }

    #[test]
    fn buffer_pressure_from_probe() {
        let m = manual(MonitorConfig::default());
        let p = Arc::new(ManualProbe::new());
        m.attach_probe(p.clone());
        p.set([0.8, 0.1], [0, 0]);
        m.evaluate();
        assert!(m.take_alerts().is_empty());
        p.set([0.95, 0.1], [7, 0]);
        m.evaluate();
        let a = m.take_alerts();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].operation, "main");
        assert!(m.prometheus_text().contains("ring=\"main\"} 7"));
    }

    #[test]
    fn window_forgets_old_intervals_total_does_not() {
        let m = manual(MonitorConfig {
            window: Duration::from_millis(120),
            ..Default::default()
        });
        m.record("op", 1_000);
        // What the evaluator thread does: tick more often than the 10 ms step.
        for _ in 0..60 {
            m.evaluate();
            std::thread::sleep(Duration::from_millis(5));
        }
        m.record("op", 2_000);
        assert_eq!(m.analysis("op", true).unwrap().count, 1);
        assert_eq!(m.analysis("op", false).unwrap().count, 2);
    }

    #[test]
    fn hlog_round_trips_through_the_crate_reader() {
        use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
        use hdrhistogram::serialization::Deserializer;
        let m = manual(MonitorConfig::default());
        for i in 1..=1000 {
            m.record("kill_switch_audit", i * 10);
        }
        let mut buf = Vec::new();
        m.write_hlog(&mut buf, false).unwrap();
        let mut n = 0;
        for e in IntervalLogIterator::new(&buf) {
            if let Ok(LogEntry::Interval(ih)) = e {
                assert_eq!(ih.tag().unwrap().as_str(), "kill_switch_audit");
                let bytes = base64_decode(ih.encoded_histogram());
                let h: Histogram<u64> = Deserializer::new()
                    .deserialize(&mut io::Cursor::new(bytes))
                    .unwrap();
                assert_eq!(h.len(), 1000);
                n += 1;
            }
        }
        assert_eq!(n, 1);
    }

    fn base64_decode(s: &str) -> Vec<u8> {
        let val = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=').collect();
        let mut out = Vec::new();
        for ch in bytes.chunks(4) {
            let mut acc = 0u32;
            for (i, c) in ch.iter().enumerate() {
                acc |= u32::from(val(*c)) << (18 - 6 * i);
            }
            for i in 0..ch.len().saturating_sub(1) {
                out.push((acc >> (16 - 8 * i)) as u8);
            }
        }
        out
    }

    #[test]
    fn failing_sink_changes_nothing() {
        let m = Monitor::new(MonitorConfig {
            tick: Duration::from_millis(5),
            rate_limit: Duration::from_millis(1),
            ..Default::default()
        });
        let seen = Arc::new(AtomicU64::new(0));
        m.add_alert_sink(Arc::new(|_| panic!("sink failure")));
        let s2 = Arc::clone(&seen);
        m.add_alert_sink(Arc::new(move |a| {
            s2.fetch_add(a.count, Ordering::Relaxed);
        }));
        for _ in 0..1000 {
            m.record("x", 100_000);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.load(Ordering::Relaxed) < 1000 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(seen.load(Ordering::Relaxed), 1000);
        assert_eq!(m.analysis("x", false).unwrap().count, 1000);
        m.shutdown();
    }

    #[test]
    fn shutdown_timeout_does_not_wait_for_a_blocked_sink() {
        let m = Monitor::new(MonitorConfig {
            tick: Duration::from_millis(1),
            ..Default::default()
        });
        let (tx, rx) = mpsc::channel::<()>();
        let rx = Mutex::new(rx);
        m.add_alert_sink(Arc::new(move |_| {
            let _ = lock(&rx).recv_timeout(Duration::from_secs(10));
        }));
        m.record("x", 1_000_000);
        std::thread::sleep(Duration::from_millis(50)); // delivery is now blocked in the sink
        let t0 = Instant::now();
        assert!(!m.shutdown_timeout(Duration::from_millis(50)));
        assert!(t0.elapsed() < Duration::from_secs(5));
        drop(tx); // unblocks the sink; the thread ends on its own
        assert!(m.shutdown_timeout(Duration::from_secs(5)));
    }

    #[test]
    fn prometheus_text_has_the_summary() {
        let m = manual(MonitorConfig::default());
        m.record("a\"b", 1_000);
        let t = m.prometheus_text();
        assert!(
            t.contains(
                "killswitch_audit_latency_seconds{operation=\"a\\\"b\",quantile=\"0.9997\"} 1e-6"
            ),
            "{t}"
        );
        assert!(t.contains("killswitch_audit_latency_seconds_count{operation=\"a\\\"b\"} 1"));
    }
}
