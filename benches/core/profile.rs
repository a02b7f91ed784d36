//! `KSA_BENCH_PROFILE=append|drain`: the append and drain loops alone, out of line, for
//! callgrind or perf (BENCHMARKS.md), instead of the benchmarks.
use crate::common::{bench_dir, entry, open_logger};
use crate::drain::{to_record, Segments, DRAIN};
use ksa_core::clock::Calibration;
use ksa_core::logger::Logger;
use ksa_core::ring::Ring;
use ksa_core::segment::{ChainWriter, SegmentWriter};
use std::hint::black_box;

/// `n` appends, kept out of line so a profiler can collect exactly this function
/// (`valgrind --tool=callgrind --toggle-collect='*profile_append_loop*'`).
#[inline(never)]
fn profile_append_loop(logger: &Logger, n: u64) -> u64 {
    let mut ok = 0;
    for i in 0..n {
        let r = logger.audit_kill_switch(
            black_box(3),
            black_box(7),
            black_box(i as i64),
            black_box(-2_500_000),
        );
        ok += r.is_ok() as u64;
    }
    ok
}

/// The flusher's work for one batch, out of line for the profiler.
#[inline(never)]
fn profile_drain_batch(
    consumer: &mut ksa_core::ring::Consumer,
    w: &mut SegmentWriter,
    cal: &Calibration,
) -> usize {
    let n = consumer.drain(DRAIN, |e| {
        w.append(&to_record(cal, e).to_bytes());
    });
    w.commit().expect("commit");
    n
}

/// The chainer's work for one batch, out of line for the profiler.
#[inline(never)]
fn profile_chain_batch(chain: &mut ChainWriter) -> u64 {
    chain.catch_up()
}

/// `KSA_BENCH_PROFILE=append|drain [KSA_BENCH_PROFILE_N=..]`: just the loop, for callgrind or
/// perf (see BENCHMARKS.md), instead of the benchmarks.
pub(crate) fn profile(what: &str) {
    let n: u64 = std::env::var("KSA_BENCH_PROFILE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    match what {
        "append" => {
            let dir = tempfile::Builder::new()
                .prefix("ksa-bench-")
                .tempdir_in(bench_dir())
                .expect("tempdir");
            let logger = open_logger(dir.path());
            let ok = profile_append_loop(&logger, n);
            logger.close();
            eprintln!("profile append: {ok} of {n} appended");
        }
        "drain" => {
            let cal = Calibration::new();
            let ring = Ring::new(DRAIN);
            let mut consumer = ring.consumer().expect("consumer");
            let mut segs = Segments::new();
            let mut total = 0;
            for _ in 0..n.div_ceil(DRAIN as u64) {
                for i in 0..DRAIN as u64 {
                    ring.try_push(&entry(i)).expect("room");
                }
                let (w, chain) = segs.room(DRAIN);
                total += profile_drain_batch(&mut consumer, w, &cal);
                profile_chain_batch(chain);
            }
            eprintln!("profile drain: {total} records");
        }
        other => eprintln!("KSA_BENCH_PROFILE={other}: expected append or drain"),
    }
}
