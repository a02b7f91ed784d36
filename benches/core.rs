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
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;
use ksa_core::clock::{self, Calibration};
use ksa_core::logger::{Logger, LoggerConfig};
use ksa_core::record::{Record, RECORD_SIZE};
use ksa_core::ring::{Entry, Ring};
use ksa_core::segment::{ChainWriter, PreparedSegment, SegmentWriter};
use memmap2::MmapOptions;

/// Entries per timed batch in the single-thread push benches.
const BATCH: usize = 1024;
/// Entries moved per iteration in the multi-thread transfer benches.
const TRANSFER: u64 = 1 << 16;
/// Records per iteration in the drain benches (4 MiB).
const DRAIN: usize = 1 << 16;
/// Slots per segment in the drain benches (64 MiB, as the default config).
const SEGMENT_RECORDS: u64 = 1 << 20;

fn entry(i: u64) -> Entry {
    Entry {
        seq: i,
        ticks: clock::ticks(),
        kind: 2,
        flags: 0,
        code: 0,
        thread_id: 4242,
        a: 100,
        b: 10_125,
        c: i,
        symbol_id: 7,
    }
}

/// Short groups: seconds per bench, not minutes.
fn quick(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    g.sample_size(20);
}

/// Producer cost on one thread: time `BATCH` pushes, then empty the queue untimed.
fn ring_push_single(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring_push_1_thread");
    quick(&mut g);
    g.throughput(Throughput::Elements(1));
    let e = entry(1);

    let ring = Ring::new(BATCH * 2);
    let mut consumer = ring.consumer().expect("consumer");
    g.bench_function("ksa_ring", |b| {
        b.iter_custom(|iters| {
            timed_batches(iters, |n| {
                let t = Instant::now();
                for _ in 0..n {
                    let _ = black_box(ring.try_push(black_box(&e)));
                }
                let el = t.elapsed();
                consumer.drain(n, |x| {
                    black_box(x);
                });
                el
            })
        })
    });

    let q = ArrayQueue::<Entry>::new(BATCH * 2);
    g.bench_function("crossbeam_array_queue", |b| {
        b.iter_custom(|iters| {
            timed_batches(iters, |n| {
                let t = Instant::now();
                for _ in 0..n {
                    let _ = black_box(q.push(black_box(e)));
                }
                let el = t.elapsed();
                while let Some(x) = q.pop() {
                    black_box(x);
                }
                el
            })
        })
    });

    let (tx, rx) = sync_channel::<Entry>(BATCH * 2);
    g.bench_function("std_sync_channel", |b| {
        b.iter_custom(|iters| {
            timed_batches(iters, |n| {
                let t = Instant::now();
                for _ in 0..n {
                    let _ = black_box(tx.try_send(black_box(e)));
                }
                let el = t.elapsed();
                while let Ok(x) = rx.try_recv() {
                    black_box(x);
                }
                el
            })
        })
    });
    g.finish();
}

/// Runs `iters` operations as batches of at most `BATCH`, summing the timed parts.
fn timed_batches(iters: u64, mut batch: impl FnMut(usize) -> Duration) -> Duration {
    let mut left = iters;
    let mut total = Duration::ZERO;
    while left > 0 {
        let n = left.min(BATCH as u64) as usize;
        total += batch(n);
        left -= n as u64;
    }
    total
}

/// A queue the transfer bench can drive: producers on threads, one consumer.
trait Transfer: Send + Sync + 'static {
    fn push(&self, e: &Entry) -> bool;
    /// Consumes what is there; returns how many.
    fn pop_some(&self, consumer: &mut Option<ksa_core::ring::Consumer>) -> usize;
}

impl Transfer for Arc<Ring> {
    fn push(&self, e: &Entry) -> bool {
        self.try_push(e).is_ok()
    }
    fn pop_some(&self, consumer: &mut Option<ksa_core::ring::Consumer>) -> usize {
        consumer.as_mut().expect("ring consumer").drain(4096, |x| {
            black_box(x);
        })
    }
}

impl Transfer for ArrayQueue<Entry> {
    fn push(&self, e: &Entry) -> bool {
        ArrayQueue::push(self, *e).is_ok()
    }
    fn pop_some(&self, _: &mut Option<ksa_core::ring::Consumer>) -> usize {
        let mut n = 0;
        while let Some(x) = self.pop() {
            black_box(x);
            n += 1;
            if n == 4096 {
                break;
            }
        }
        n
    }
}

/// `sync_channel`: the receiver is not `Sync`, so the consumer side owns it directly.
struct Channel {
    tx: std::sync::mpsc::SyncSender<Entry>,
    rx: std::sync::Mutex<std::sync::mpsc::Receiver<Entry>>,
}

impl Transfer for Channel {
    fn push(&self, e: &Entry) -> bool {
        !matches!(self.tx.try_send(*e), Err(TrySendError::Full(_)))
    }
    fn pop_some(&self, _: &mut Option<ksa_core::ring::Consumer>) -> usize {
        let rx = self.rx.lock().expect("receiver");
        let mut n = 0;
        while let Ok(x) = rx.try_recv() {
            black_box(x);
            n += 1;
            if n == 4096 {
                break;
            }
        }
        n
    }
}

/// `producers` threads push `TRANSFER` entries in total while this thread consumes them all;
/// a full queue makes a producer yield (the 2-core machine runs more threads than cores).
fn transfer<Q: Transfer + Clone>(
    q: &Q,
    consumer: &mut Option<ksa_core::ring::Consumer>,
    producers: u64,
) -> Duration {
    let per = TRANSFER / producers;
    let go = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..producers)
        .map(|p| {
            let q = q.clone();
            let go = Arc::clone(&go);
            std::thread::spawn(move || {
                while !go.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                for i in 0..per {
                    let e = entry(p * per + i);
                    while !q.push(&e) {
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    let start = Instant::now();
    go.store(true, Ordering::Release);
    let mut got = 0u64;
    while got < per * producers {
        let n = q.pop_some(consumer) as u64;
        if n == 0 {
            std::thread::yield_now();
        }
        got += n;
    }
    let el = start.elapsed();
    for h in handles {
        h.join().expect("producer");
    }
    el
}

struct SharedQueue<T>(Arc<T>);

impl<T> Clone for SharedQueue<T> {
    fn clone(&self) -> Self {
        SharedQueue(Arc::clone(&self.0))
    }
}

impl<T: Transfer> Transfer for SharedQueue<T> {
    fn push(&self, e: &Entry) -> bool {
        self.0.push(e)
    }
    fn pop_some(&self, c: &mut Option<ksa_core::ring::Consumer>) -> usize {
        self.0.pop_some(c)
    }
}

/// Producers on their own threads, one consumer: records per second through each queue.
fn ring_transfer(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring_transfer_threads");
    quick(&mut g);
    g.sample_size(10);
    g.throughput(Throughput::Elements(TRANSFER));
    for producers in [1u64, 2, 4] {
        let ring = Ring::new(8192);
        let mut consumer = ring.consumer();
        let q = SharedQueue(Arc::new(ring));
        g.bench_with_input(
            BenchmarkId::new("ksa_ring", producers),
            &producers,
            |b, &p| b.iter_custom(|iters| (0..iters).map(|_| transfer(&q, &mut consumer, p)).sum()),
        );
        let q = SharedQueue(Arc::new(ArrayQueue::<Entry>::new(8192)));
        g.bench_with_input(
            BenchmarkId::new("crossbeam_array_queue", producers),
            &producers,
            |b, &p| b.iter_custom(|iters| (0..iters).map(|_| transfer(&q, &mut None, p)).sum()),
        );
        let (tx, rx) = sync_channel(8192);
        let q = SharedQueue(Arc::new(Channel {
            tx,
            rx: std::sync::Mutex::new(rx),
        }));
        g.bench_with_input(
            BenchmarkId::new("std_sync_channel", producers),
            &producers,
            |b, &p| b.iter_custom(|iters| (0..iters).map(|_| transfer(&q, &mut None, p)).sum()),
        );
    }
    g.finish();
}

/// A segment writer and its chain writer, rolling to a fresh file (untimed) when full.
struct Segments {
    dir: tempfile::TempDir,
    index: u64,
    current: Option<(SegmentWriter, ChainWriter)>,
}

impl Segments {
    fn new() -> Segments {
        let dir = tempfile::Builder::new()
            .prefix("ksa-bench-")
            .tempdir_in(drain_dir())
            .expect("tempdir");
        Segments {
            dir,
            index: 0,
            current: None,
        }
    }

    /// The writers of a segment with room for `n` more records.
    fn room(&mut self, n: usize) -> (&mut SegmentWriter, &mut ChainWriter) {
        let full = match &self.current {
            Some((w, _)) => w.remaining() < n as u64,
            None => true,
        };
        if full {
            if let Some((old, chain)) = self.current.take() {
                let path = old.path().to_path_buf();
                old.finish().expect("finish");
                let _ = chain.seal();
                let _ = std::fs::remove_file(path);
            }
            let p = PreparedSegment::create(self.dir.path(), self.index, SEGMENT_RECORDS)
                .expect("segment");
            let w = p.activate(0, u64::MAX, &[0; 32], None).expect("activate");
            let chain = ChainWriter::open(w.path(), &[0; 32], None).expect("chain writer");
            self.current = Some((w, chain));
            self.index += 1;
        }
        let (w, c) = self.current.as_mut().expect("writer");
        (w, c)
    }
}

/// Where the benches put their files: `KSA_BENCH_DIR`, else the system temp directory.
fn bench_dir() -> std::path::PathBuf {
    std::env::var_os("KSA_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir)
}

/// Where the drain benches put their segments: `KSA_BENCH_DRAIN_DIR`, else `/dev/shm` when it
/// exists. The drain measures the flusher's CPU work into mapped pages; on a disk the same
/// pages are written back later and asynchronously (`sync_file_range`), and gigabytes of
/// bench output would only measure the disk.
fn drain_dir() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("KSA_BENCH_DRAIN_DIR") {
        return d.into();
    }
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        bench_dir()
    }
}

fn to_record(cal: &Calibration, e: &Entry) -> Record {
    let (mono_ns, wall_ns) = cal.to_ns(e.ticks);
    Record::from_entry(e, mono_ns, wall_ns)
}

/// The flusher's work per record, and its parts, next to a plain memcpy into a mapping.
fn drain(c: &mut Criterion) {
    let mut g = c.benchmark_group("drain_into_mmap_segment");
    g.warm_up_time(Duration::from_millis(300));
    g.measurement_time(Duration::from_secs(1));
    g.sample_size(10);
    g.throughput(Throughput::ElementsAndBytes {
        elements: DRAIN as u64,
        bytes: (DRAIN * RECORD_SIZE) as u64,
    });
    let cal = Calibration::new();
    let encoded: Vec<[u8; RECORD_SIZE]> = (0..DRAIN as u64)
        .map(|i| to_record(&cal, &entry(i)).to_bytes())
        .collect();
    let flat: Vec<u8> = encoded.iter().flatten().copied().collect();

    // The limit: one memcpy of the batch into a populated, fully allocated shared file mapping.
    {
        let dir = tempfile::Builder::new()
            .prefix("ksa-bench-")
            .tempdir_in(drain_dir())
            .expect("tempdir");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("memcpy.bin"))
            .expect("file");
        let len = (SEGMENT_RECORDS as usize) * RECORD_SIZE;
        ksa_core::segment::allocate(&file, len as u64).expect("allocate");
        // SAFETY: a private temporary file, fully allocated, that nothing else maps or truncates.
        let mut map =
            unsafe { MmapOptions::new().len(len).populate().map_mut(&file) }.expect("mmap");
        let mut at = 0usize;
        g.bench_function("memcpy_limit", |b| {
            b.iter(|| {
                if at + flat.len() > len {
                    at = 0;
                }
                map[at..at + flat.len()].copy_from_slice(black_box(&flat));
                at += flat.len();
            })
        });
    }

    // SegmentWriter::append of records already encoded (no CRC, no chain).
    let mut segs = Segments::new();
    g.bench_function("segment_append_encoded", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (w, _) = segs.room(DRAIN);
                let t = Instant::now();
                for r in &encoded {
                    w.append(black_box(r));
                }
                total += t.elapsed();
            }
            total
        })
    });

    // As the flusher does it: ring drain, ticks -> ns, encode + CRC-32C, append, commit.
    let ring = Ring::new(DRAIN);
    let mut consumer = ring.consumer().expect("consumer");
    let fill = |ring: &Ring| {
        for i in 0..DRAIN as u64 {
            ring.try_push(&entry(i)).expect("room");
        }
    };
    g.bench_function("flusher_ring_drain_crc_append_commit", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                fill(&ring);
                let (w, _) = segs.room(DRAIN);
                let t = Instant::now();
                let n = consumer.drain(DRAIN, |e| {
                    w.append(&to_record(&cal, e).to_bytes());
                });
                w.commit().expect("commit");
                total += t.elapsed();
                assert_eq!(n, DRAIN);
            }
            total
        })
    });

    // The chainer thread's share (it runs beside the flusher): SHA-256 over the records the
    // flusher committed, read back with pread, and the chain head published.
    g.bench_function("chainer_sha256_catch_up", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (w, chain) = segs.room(DRAIN);
                chain.catch_up(); // what the other benches committed, untimed
                for r in &encoded {
                    w.append(r);
                }
                w.commit().expect("commit");
                let t = Instant::now();
                let n = chain.catch_up();
                total += t.elapsed();
                assert_eq!(n, DRAIN as u64);
            }
            total
        })
    });
    g.finish();

    // The parts on their own, per record.
    let mut g = c.benchmark_group("drain_parts_per_record");
    quick(&mut g);
    g.throughput(Throughput::Elements(1));
    let rec = to_record(&cal, &entry(9));
    g.bench_function("encode_with_crc32c", |b| {
        b.iter(|| black_box(black_box(&rec).to_bytes()))
    });
    let mut chain = ksa_core::chain::Chain::start(None, &[0; 32], 0);
    g.bench_function("sha256_chain_update_64B", |b| {
        b.iter(|| chain.update(black_box(&flat[..RECORD_SIZE])))
    });
    g.finish();
}

fn open_logger(dir: &std::path::Path) -> Logger {
    let mut cfg = LoggerConfig::new(dir);
    // Rings large enough that the flusher on a busy 2-core machine never lets them fill:
    // this measures the append, not the drop path.
    cfg.main_capacity = 1 << 22;
    cfg.emergency_capacity = 1 << 22;
    Logger::open(cfg).expect("logger")
}

/// End-to-end Rust-native append through the logger (the flusher runs as in production).
///
/// Timed in batches that fit the ring, with an untimed `flush` between them: the flusher
/// cannot keep up with a producer that does nothing
/// but append, so without the pause this would measure the drop path after the first second.
fn append(c: &mut Criterion) {
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

/// The hot-path timestamp and its peers.
fn clocks(c: &mut Criterion) {
    let mut g = c.benchmark_group("clock");
    quick(&mut g);
    g.bench_function("ksa_clock_ticks", |b| b.iter(|| black_box(clock::ticks())));
    g.bench_function("std_instant_now", |b| b.iter(|| black_box(Instant::now())));
    g.bench_function("clock_gettime_monotonic", |b| {
        b.iter(|| black_box(clock::monotonic_ns()))
    });
    g.finish();
}

criterion_group!(
    benches,
    ring_push_single,
    ring_transfer,
    drain,
    append,
    clocks
);

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
fn percentile_harness() {
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
fn profile(what: &str) {
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
