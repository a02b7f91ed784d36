//! The record path: one measured [`Operation`], its per-CPU shards of fixed-range histograms,
//! and the collection that moves their contents out for readers.
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
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use crossbeam_utils::CachePadded;
use hdrhistogram::Histogram;

use super::window::Accum;
use super::{
    is_kill_switch_operation, lock, HIGHEST_TRACKABLE_NS, SIGNIFICANT_DIGITS, WINDOW_SLOTS,
};

/// Plain counters kept beside a histogram.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Counters {
    pub(super) sum: u64,
    pub(super) breaches: u64,
    pub(super) clamped: u64,
}

impl Counters {
    pub(super) fn add(&mut self, o: &Counters) {
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

pub(super) fn accumulating_histogram() -> Histogram<u64> {
    // Auto-resizing: grows to the largest value actually seen; only touched off the record path.
    Histogram::new(SIGNIFICANT_DIGITS).expect("constant sigfig is valid")
}

/// One measured operation. Get it with [`Monitor::operation`](super::Monitor::operation) and keep it to record without the
/// name lookup.
pub struct Operation {
    pub(super) name: String,
    pub(super) kill_switch: bool,
    /// Listed and exported: set by its first record or an explicit [`Monitor::operation`](super::Monitor::operation);
    /// false only for a pre-created operation never used yet.
    pub(super) visible: AtomicBool,
    /// Copy of the monitor's breach threshold, clamped to `HIGHEST_TRACKABLE_NS`, so that the
    /// clamp check can live inside the breach branch.
    threshold_ns: u64,
    shard_mask: usize,
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    pub(super) acc: Mutex<Accum>,
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
pub(super) struct OpParts {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    spare: Histogram<u64>,
}

impl OpParts {
    /// With `prefault`, every page of the counts is written now (about 0.5 ms and the full
    /// ~220 KB per histogram resident): for the operations a stop records. Without, pages
    /// come from calloc's zero pages and fault on the first record that lands in them
    /// (about a microsecond each), and an operation only ever holds the pages it used.
    pub(super) fn new(shards: usize, prefault: bool) -> OpParts {
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
    pub(super) fn new(name: &str, threshold_ns: u64, parts: OpParts, visible: bool) -> Self {
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
    pub(super) fn collect(&self, acc: &mut Accum) {
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
}
