//! Cost of recording one latency in the monitor, next to its parts and peers:
//! a bare `Histogram::saturating_record` (no lock) and an atomic counter increment.
//!
//! Run: `cargo bench -p killswitch-audit-core --bench monitor`.
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use hdrhistogram::Histogram;
use ksa_core::monitor::{Monitor, MonitorConfig, HIGHEST_TRACKABLE_NS};

/// Latencies cycling through a realistic spread (0.3 .. 20 µs), so the histogram index varies.
fn values() -> Vec<u64> {
    (0..4096u64).map(|i| 300 + (i * 7919) % 20_000).collect()
}

fn record(c: &mut Criterion) {
    let vals = values();
    let mut g = c.benchmark_group("monitor_record");
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(2));

    // The monitor runs its evaluator thread as in production (collecting every 100 ms).
    let m = Arc::new(Monitor::new(MonitorConfig::default()));
    let op = m.operation("kill_switch_audit");
    let mut i = 0usize;
    g.bench_function("operation_handle", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            op.record(black_box(vals[i]));
        })
    });
    g.bench_function("by_name", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            m.record(black_box("kill_switch_audit"), black_box(vals[i]));
        })
    });
    // Two threads recording the same operation at once (this machine has two cores).
    g.bench_function("operation_handle_2_threads", |b| {
        b.iter_custom(|iters| {
            let other = {
                let op = m.operation("kill_switch_audit");
                let vals = vals.clone();
                std::thread::spawn(move || {
                    for k in 0..iters as usize {
                        op.record(black_box(vals[k & 4095]));
                    }
                })
            };
            let start = Instant::now();
            for k in 0..iters as usize {
                op.record(black_box(vals[k & 4095]));
            }
            let t = start.elapsed();
            let _ = other.join();
            t
        })
    });
    // Peers: what the lock and bookkeeping add on top of the histogram itself.
    let mut h = Histogram::<u64>::new_with_bounds(1, HIGHEST_TRACKABLE_NS, 3).unwrap();
    g.bench_function("peer_bare_histogram", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            h.saturating_record(black_box(vals[i]));
        })
    });
    let counter = AtomicU64::new(0);
    g.bench_function("peer_atomic_fetch_add", |b| {
        b.iter(|| {
            counter.fetch_add(black_box(1), Ordering::Relaxed);
        })
    });
    g.finish();
    m.shutdown();
}

criterion_group!(benches, record);
criterion_main!(benches);
