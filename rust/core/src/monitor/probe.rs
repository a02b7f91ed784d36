//! What the monitor sees of an audit logger: the [`RingProbe`] trait (ring fill, drops and sink
//! errors of the two rings, read by the evaluator and the Prometheus export) and
//! [`ManualProbe`], whose values are pushed by hand.
use std::sync::atomic::{AtomicU64, Ordering};

/// Reports the fill and drop counters of an audit logger's two rings.
///
/// Index 0 is the main ring, index 1 the emergency (kill-switch) ring. Called from the
/// monitor's evaluator thread and from [`Monitor::prometheus_text`](super::Monitor::prometheus_text), never from a record path.
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

/// Names of the two rings, in [`RingProbe`] index order.
pub const RING_NAMES: [&str; 2] = ["main", "emergency"];
