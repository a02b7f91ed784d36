//! The harness run after criterion: p50/p99/p99.9/p99.97/max of single calls timed with
//! `rdtsc` (criterion reports means).
use crate::common::{bench_dir, entry, open_logger};
use ksa_core::clock;
use ksa_core::ring::Ring;
use std::hint::black_box;

/// Timestamp counter reads around one call, for percentiles (criterion reports means).
mod tsc {
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub fn start() -> u64 {
        // SAFETY: lfence and rdtsc have no preconditions on x86_64; the fence keeps earlier
        // instructions from drifting into the timed region.
        unsafe {
            std::arch::x86_64::_mm_lfence();
            std::arch::x86_64::_rdtsc()
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub fn stop() -> u64 {
        let mut aux = 0u32;
        // SAFETY: rdtscp only writes the aux word we pass; lfence has no preconditions. rdtscp
        // waits for the timed instructions to retire, the fence keeps later ones out.
        unsafe {
            let t = std::arch::x86_64::__rdtscp(&mut aux);
            std::arch::x86_64::_mm_lfence();
            t
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub fn start() -> u64 {
        ksa_core::clock::monotonic_ns()
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub fn stop() -> u64 {
        ksa_core::clock::monotonic_ns()
    }

    /// Nanoseconds per tick, measured against `Instant` over 100 ms.
    pub fn ns_per_tick() -> f64 {
        let (t0, i0) = (start(), std::time::Instant::now());
        std::thread::sleep(std::time::Duration::from_millis(100));
        let (t1, i1) = (stop(), std::time::Instant::now());
        (i1 - i0).as_nanos() as f64 / (t1 - t0).max(1) as f64
    }
}

/// Per-call percentiles of `f`, in ns, with the timer's own cost (its median) subtracted.
fn percentiles(samples: usize, ns_per_tick: f64, overhead: u64, mut f: impl FnMut()) -> [f64; 5] {
    let mut v: Vec<u64> = Vec::with_capacity(samples);
    for _ in 0..samples / 10 {
        f(); // warm-up
    }
    for _ in 0..samples {
        let t0 = tsc::start();
        f();
        let t1 = tsc::stop();
        v.push((t1 - t0).saturating_sub(overhead));
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)] as f64 * ns_per_tick;
    [
        at(0.5),
        at(0.99),
        at(0.999),
        at(0.9997),
        *v.last().expect("samples") as f64 * ns_per_tick,
    ]
}

/// A named operation of the percentile harness.
type Row<'a> = (&'static str, Box<dyn FnMut() + 'a>);

/// Prints p50/p99/p99.9/p99.97/max of single Rust-native appends (the DESIGN asks p50 < 20 ns).
pub(crate) fn percentile_harness() {
    const N: usize = 1_000_000;
    let ns_per_tick = tsc::ns_per_tick();
    let mut overhead: Vec<u64> = (0..100_000)
        .map(|_| {
            let t0 = tsc::start();
            let t1 = tsc::stop();
            t1 - t0
        })
        .collect();
    overhead.sort_unstable();
    let resolution = overhead
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|&d| d > 0)
        .min()
        .unwrap_or(1);
    let overhead = overhead[overhead.len() / 2];
    let dir = tempfile::Builder::new()
        .prefix("ksa-bench-")
        .tempdir_in(bench_dir())
        .expect("tempdir");
    let logger = open_logger(dir.path());
    eprintln!();
    eprintln!(
        "percentiles of single calls, {N} each; timer overhead {:.1} ns subtracted; timer resolution {:.1} ns",
        overhead as f64 * ns_per_tick,
        resolution as f64 * ns_per_tick
    );
    eprintln!(
        "{:<34} {:>8} {:>8} {:>8} {:>9} {:>10}",
        "operation", "p50 ns", "p99 ns", "p99.9 ns", "p99.97 ns", "max ns"
    );
    let ring = Ring::new(1 << 21);
    let mut consumer = ring.consumer().expect("consumer");
    let e = entry(5);
    let mut i = 0u64;
    let rows: [Row<'_>; 4] = [
        ("empty (timer floor)", Box::new(|| {})),
        (
            "clock::ticks",
            Box::new(|| {
                black_box(clock::ticks());
            }),
        ),
        (
            "Ring::try_push",
            Box::new(|| {
                i += 1;
                if i & ((1 << 20) - 1) == 0 {
                    consumer.drain(1 << 21, |_| {});
                }
                let _ = black_box(ring.try_push(black_box(&e)));
            }),
        ),
        (
            "Logger::audit_kill_switch",
            Box::new(|| {
                let _ = black_box(logger.audit_kill_switch(
                    black_box(3),
                    black_box(7),
                    black_box(100),
                    black_box(-2_500_000),
                ));
            }),
        ),
    ];
    for (name, mut f) in rows {
        let p = percentiles(N, ns_per_tick, overhead, &mut f);
        eprintln!(
            "{name:<34} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>10.1}",
            p[0], p[1], p[2], p[3], p[4]
        );
    }
    let p = percentiles(N, ns_per_tick, overhead, || {
        let _ = black_box(logger.audit_trade(
            black_box(7),
            black_box(100),
            black_box(10_125),
            black_box(1),
        ));
    });
    eprintln!(
        "{:<34} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>10.1}",
        "Logger::audit_trade", p[0], p[1], p[2], p[3], p[4]
    );
    // Batches of 32 calls, so the timer's own cost is spread thin: the mean per call of a batch.
    let mut batch: Vec<f64> = (0..20_000)
        .map(|_| {
            let t0 = tsc::start();
            for _ in 0..32 {
                let _ = black_box(logger.audit_kill_switch(
                    black_box(3),
                    black_box(7),
                    black_box(100),
                    black_box(-2_500_000),
                ));
            }
            let t1 = tsc::stop();
            (t1 - t0).saturating_sub(overhead) as f64 * ns_per_tick / 32.0
        })
        .collect();
    batch.sort_unstable_by(f64::total_cmp);
    eprintln!(
        "{:<34} {:>8.1} {:>8.1}   (per call, batches of 32)",
        "Logger::audit_kill_switch x32",
        batch[batch.len() / 2],
        batch[batch.len() * 99 / 100]
    );
    let s = logger.stats();
    logger.close();
    eprintln!(
        "percentile logger: {} written, dropped main {} emergency {}",
        s.records_written, s.dropped_main, s.dropped_emergency
    );
}
