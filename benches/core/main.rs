//! Core benchmarks: the ring next to its peers, the flusher's drain into an mmap segment next
//! to the memcpy limit, the end-to-end Rust-native append, and the hot-path clock.
//!
//! Run: `cargo bench -p killswitch-audit-core --bench core` (about a minute on 2 cores).
//! Filter as usual (`-- ring_push`). After criterion (which reports means), a small harness
//! times single `Logger::audit_kill_switch` / `audit_trade` calls with `rdtsc` and prints
//! p50/p99/p99.9/max; skip it with `KSA_BENCH_NO_PERCENTILES=1`.
//!
//! Every peer carries the same 64-byte slot: the ring stores one cache line per entry; a
//! crossbeam `ArrayQueue<Entry>` slot is an 8-byte stamp plus the 56-byte `Entry`, 64 bytes;
//! `sync_channel` moves the same `Entry` by value.
//!
//! Files: `common.rs` (the entry, group settings, directories and logger the benches share),
//! `ring.rs` (push and transfer next to crossbeam and `sync_channel`), `drain.rs` (the
//! flusher's work into a segment), `append.rs` (the logger end to end), `clock.rs`,
//! `percentiles.rs` (the rdtsc harness) and `profile.rs` (loops for callgrind and perf).
use criterion::{criterion_group, Criterion};

mod append;
mod clock;
mod common;
mod drain;
mod percentiles;
mod profile;
mod ring;

use append::append;
use clock::clocks;
use drain::drain;
use percentiles::percentile_harness;
use profile::profile;
use ring::{ring_push_single, ring_transfer};

criterion_group!(
    benches,
    ring_push_single,
    ring_transfer,
    drain,
    append,
    clocks
);
fn main() {
    if let Ok(what) = std::env::var("KSA_BENCH_PROFILE") {
        profile(&what);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    let listing = std::env::args().any(|a| a == "--list" || a == "--test");
    if !listing && std::env::var_os("KSA_BENCH_NO_PERCENTILES").is_none() {
        percentile_harness();
    }
}
