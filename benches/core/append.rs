//! The Rust-native append end to end through the logger, its flusher running.
use crate::common::{bench_dir, open_logger, quick};
use criterion::{Criterion, Throughput};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// End-to-end Rust-native append through the logger (the flusher runs as in production).
///
/// Timed in batches that fit the ring, with an untimed `flush` between them: the flusher
/// cannot keep up with a producer that does nothing
/// but append, so without the pause this would measure the drop path after the first second.
pub(crate) fn append(c: &mut Criterion) {
    const APPEND_BATCH: u64 = 1 << 16;
    let mut g = c.benchmark_group("logger_append");
    quick(&mut g);
    g.throughput(Throughput::Elements(1));
    let dir = tempfile::Builder::new()
        .prefix("ksa-bench-")
        .tempdir_in(bench_dir())
        .expect("tempdir");
    let logger = open_logger(dir.path());
    let batched = |iters: u64, call: &dyn Fn()| {
        let mut left = iters;
        let mut total = Duration::ZERO;
        while left > 0 {
            let n = left.min(APPEND_BATCH);
            let t = Instant::now();
            for _ in 0..n {
                call();
            }
            total += t.elapsed();
            left -= n;
            logger.flush(None, false);
        }
        total
    };
    g.bench_function("audit_kill_switch", |b| {
        b.iter_custom(|iters| {
            batched(iters, &|| {
                let _ = black_box(logger.audit_kill_switch(
                    black_box(3),
                    black_box(7),
                    black_box(100),
                    black_box(-2_500_000),
                ));
            })
        })
    });
    g.bench_function("audit_trade", |b| {
        b.iter_custom(|iters| {
            batched(iters, &|| {
                let _ = black_box(logger.audit_trade(
                    black_box(7),
                    black_box(100),
                    black_box(10_125),
                    black_box(1),
                ));
            })
        })
    });
    g.finish();
    let s = logger.stats();
    logger.close();
    eprintln!(
        "logger_append: {} records written, dropped main {} emergency {}",
        s.records_written, s.dropped_main, s.dropped_emergency
    );
}
