//! The hot-path timestamp (`clock::ticks`) next to `Instant::now` and `clock_gettime`.
use crate::common::quick;
use criterion::Criterion;
use ksa_core::clock;
use std::hint::black_box;
use std::time::Instant;

/// The hot-path timestamp and its peers.
pub(crate) fn clocks(c: &mut Criterion) {
    let mut g = c.benchmark_group("clock");
    quick(&mut g);
    g.bench_function("ksa_clock_ticks", |b| b.iter(|| black_box(clock::ticks())));
    g.bench_function("std_instant_now", |b| b.iter(|| black_box(Instant::now())));
    g.bench_function("clock_gettime_monotonic", |b| {
        b.iter(|| black_box(clock::monotonic_ns()))
    });
    g.finish();
}
