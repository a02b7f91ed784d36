//! Time on the hot path costs one `rdtsc`; the flusher turns ticks into nanoseconds.
//!
//! Producers store raw ticks ([`ticks`]). The flusher owns a [`Calibration`] that maps ticks
//! to CLOCK_MONOTONIC and CLOCK_REALTIME nanoseconds by linear interpolation between anchor
//! samples, re-anchored every [`Calibration::REANCHOR_NS`] so that NTP slewing of the wall
//! clock is followed within microseconds. Where the TSC is not invariant (or not x86_64),
//! ticks are CLOCK_MONOTONIC nanoseconds and the mapping is the identity plus an offset.

use std::sync::OnceLock;

/// Reads CLOCK_MONOTONIC in ns.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Reads CLOCK_REALTIME (UTC) in ns since the Unix epoch.
pub fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes into it.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn tsc_is_invariant() -> bool {
    static INVARIANT: OnceLock<bool> = OnceLock::new();
    *INVARIANT.get_or_init(|| {
        if !cfg!(target_arch = "x86_64") || std::env::var_os("KILLSWITCH_AUDIT_NO_TSC").is_some() {
            return false;
        }
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let flags = info.lines().find(|l| l.starts_with("flags")).unwrap_or("");
        flags.split_whitespace().any(|f| f == "constant_tsc")
            && flags.split_whitespace().any(|f| f == "nonstop_tsc")
    })
}

/// Whether [`ticks`] reads the TSC (true) or CLOCK_MONOTONIC (false). Fixed per process.
pub fn uses_tsc() -> bool {
    tsc_is_invariant()
}

/// The hot-path timestamp: TSC ticks when invariant, CLOCK_MONOTONIC ns otherwise.
#[inline]
pub fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if tsc_is_invariant() {
            // SAFETY: rdtsc has no preconditions on x86_64; it only reads the time-stamp counter.
            return unsafe { std::arch::x86_64::_rdtsc() };
        }
    }
    monotonic_ns()
}

#[derive(Clone, Copy, Debug)]
struct Anchor {
    ticks: u64,
    mono_ns: u64,
    wall_ns: u64,
}

fn sample_anchor() -> Anchor {
    // Bracket the clock reads between two tick reads and keep the tightest of a few tries,
    // so that the anchor's error is a few tens of ns.
    let mut best: Option<(u64, Anchor)> = None;
    for _ in 0..5 {
        let t0 = ticks();
        let mono_ns = monotonic_ns();
        let wall_ns = realtime_ns();
        let t1 = ticks();
        let width = t1.wrapping_sub(t0);
        let anchor = Anchor {
            ticks: t0 + width / 2,
            mono_ns,
            wall_ns,
        };
        if best.is_none_or(|(w, _)| width < w) {
            best = Some((width, anchor));
        }
    }
    best.expect("at least one sample").1
}

/// Maps ticks to (monotonic ns, wall ns). Owned by one thread (the flusher).
#[derive(Debug)]
pub struct Calibration {
    origin: Anchor,
    latest: Anchor,
    /// ns per tick in 32.32 fixed point.
    scale: u64,
}

impl Calibration {
    /// How often [`Calibration::maybe_reanchor`] takes a new anchor.
    pub const REANCHOR_NS: u64 = 200_000_000;

    /// Takes two anchors a few milliseconds apart to get a first tick rate.
    pub fn new() -> Calibration {
        let origin = sample_anchor();
        if !uses_tsc() {
            return Calibration {
                origin,
                latest: origin,
                scale: 1 << 32,
            };
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        let mut cal = Calibration {
            origin,
            latest: origin,
            scale: 1 << 32,
        };
        cal.reanchor();
        cal
    }

    fn reanchor(&mut self) {
        let now = sample_anchor();
        if uses_tsc() {
            let dt = now.ticks.wrapping_sub(self.origin.ticks).max(1) as u128;
            let dns = now.mono_ns.saturating_sub(self.origin.mono_ns) as u128;
            self.scale = ((dns << 32) / dt) as u64;
        }
        self.latest = now;
    }

    /// Re-anchors when the latest anchor is older than [`Calibration::REANCHOR_NS`].
    pub fn maybe_reanchor(&mut self, now_mono_ns: u64) {
        if now_mono_ns.saturating_sub(self.latest.mono_ns) >= Self::REANCHOR_NS {
            self.reanchor();
        }
    }

    /// Converts a tick value taken by [`ticks`] to (monotonic ns, UTC ns).
    #[inline]
    pub fn to_ns(&self, t: u64) -> (u64, u64) {
        let a = &self.latest;
        let delta = t.wrapping_sub(a.ticks) as i64;
        let delta_ns = ((delta as i128 * self.scale as i128) >> 32) as i64;
        let mono = (a.mono_ns as i64).saturating_add(delta_ns) as u64;
        let wall = (a.wall_ns as i64).saturating_add(delta_ns) as u64;
        (mono, wall)
    }
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration::new()
    }
}

/// How many [`ticks`] make `ns` nanoseconds (measured over ~200 µs; ticks are ns when the TSC
/// is not used). For rate limits, where a percent off is harmless; never for timestamps.
pub fn ns_to_ticks(ns: u64) -> u64 {
    if !uses_tsc() {
        return ns;
    }
    let (t0, n0) = (ticks(), monotonic_ns());
    let mut n1 = n0;
    while n1.saturating_sub(n0) < 200_000 {
        std::hint::spin_loop();
        n1 = monotonic_ns();
    }
    let t1 = ticks();
    let per_ns = t1.wrapping_sub(t0) as f64 / n1.saturating_sub(n0).max(1) as f64;
    (ns as f64 * per_ns) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_convert_close_to_the_clocks() {
        let mut cal = Calibration::new();
        std::thread::sleep(std::time::Duration::from_millis(20));
        cal.reanchor();
        let t = ticks();
        let mono = monotonic_ns();
        let wall = realtime_ns();
        let (m, w) = cal.to_ns(t);
        // Generous bounds: a busy 2-core VM can preempt between the reads.
        assert!(
            (m as i64 - mono as i64).abs() < 2_000_000,
            "mono off by {}",
            m as i64 - mono as i64
        );
        assert!(
            (w as i64 - wall as i64).abs() < 2_000_000,
            "wall off by {}",
            w as i64 - wall as i64
        );
        let (m2, _) = cal.to_ns(ticks());
        assert!(m2 >= m);
    }
}
