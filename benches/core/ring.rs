//! The ring next to its peers (crossbeam `ArrayQueue`, `sync_channel`): one producer's
//! push cost, and throughput with producers on their own threads.
use crate::common::{entry, quick};
use criterion::{BenchmarkId, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;
use ksa_core::ring::{Entry, Ring};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Entries per timed batch in the single-thread push benches.
const BATCH: usize = 1024;
/// Entries moved per iteration in the multi-thread transfer benches.
const TRANSFER: u64 = 1 << 16;

/// Producer cost on one thread: time `BATCH` pushes, then empty the queue untimed.
pub(crate) fn ring_push_single(c: &mut Criterion) {
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
pub(crate) fn ring_transfer(c: &mut Criterion) {
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
