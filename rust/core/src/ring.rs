//! A bounded multi-producer, single-consumer ring of 64-byte slots.
//!
//! # Protocol
//! - `tail` is the next position producers claim; `head` is the next position the consumer
//!   reads. Positions only grow (u64, never wraps in practice); slot = `pos & mask`.
//!   Invariant: `head <= tail <= head + capacity`.
//! - A producer loads `head` (Acquire, pairing with the consumer's Release store, so the
//!   consumer's reads of a slot happen before the producer rewrites it), checks
//!   `tail - head < capacity`, and claims `tail` by CAS. Full means no claim: nothing waits.
//! - It then writes words 0..7 of the slot (Relaxed) and publishes with a Release store of
//!   word 7, whose high 32 bits hold the slot's *stamp*: `lap(pos) + 1`. The consumer loads
//!   word 7 with Acquire and accepts the slot only when the stamp is the one expected for
//!   `head`, so a claimed but not yet published slot (a producer preempted mid-write) stops
//!   the drain there until the next pass; it is never read half-written.
//! - The consumer stores the new `head` (Release) after copying the slots out.
//!
//! Every slot word is an atomic, so the ring has no `unsafe` and no data race by construction;
//! on x86_64 the Relaxed stores compile to plain `mov`s.
use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// One cache line: the record's eight 64-bit words.
#[repr(C, align(64))]
#[derive(Default)]
struct Slot([AtomicU64; 8]);

/// What a producer hands to the ring; timestamps are raw [`crate::clock::ticks`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// Sequence number.
    pub seq: u64,
    /// Raw ticks at the call.
    pub ticks: u64,
    /// Record kind.
    pub kind: u8,
    /// Record flags.
    pub flags: u8,
    /// Reason / code.
    pub code: u16,
    /// Producer thread id.
    pub thread_id: u32,
    /// Field `a`.
    pub a: i64,
    /// Field `b`.
    pub b: i64,
    /// Field `c`.
    pub c: u64,
    /// Instrument id.
    pub symbol_id: u32,
}

/// The ring. Create with [`Ring::new`], produce with [`Ring::try_push`] from any thread,
/// consume through the single [`Consumer`] from [`Ring::consumer`].
pub struct Ring {
    slots: Box<[Slot]>,
    mask: u64,
    shift: u32,
    /// Next position to claim; in `head ..= head + capacity`.
    tail: CachePadded<AtomicU64>,
    /// Next position to read; written only by the consumer.
    head: CachePadded<AtomicU64>,
    consumer_taken: AtomicBool,
}

/// The ring is full: the entry was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl Ring {
    /// A ring of `capacity` slots (a power of two, at least 2), all pages touched now so the
    /// hot path never takes a page fault.
    pub fn new(capacity: usize) -> Arc<Ring> {
        assert!(
            capacity.is_power_of_two() && capacity >= 2,
            "ring capacity must be a power of two >= 2"
        );
        let slots: Box<[Slot]> = (0..capacity).map(|_| Slot::default()).collect();
        // Pre-fault: a write to every slot (collect already wrote zeros, but do it explicitly so
        // an allocator that hands out lazily-zeroed pages cannot defer the faults to the hot path).
        for slot in slots.iter() {
            slot.0[7].store(0, Ordering::Relaxed);
        }
        Arc::new(Ring {
            slots,
            mask: capacity as u64 - 1,
            shift: capacity.trailing_zeros(),
            tail: CachePadded::new(AtomicU64::new(0)),
            head: CachePadded::new(AtomicU64::new(0)),
            consumer_taken: AtomicBool::new(false),
        })
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Entries claimed and not yet consumed (approximate while producers run).
    pub fn len(&self) -> usize {
        let head = self.head.load(Ordering::Acquire);
        let tail = self.tail.load(Ordering::Acquire);
        tail.saturating_sub(head) as usize
    }

    /// True when no entry is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total positions claimed so far (the producer's cursor).
    pub fn claimed(&self) -> u64 {
        self.tail.load(Ordering::Acquire)
    }

    /// Total positions consumed so far (the consumer's cursor).
    pub fn consumed(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    #[inline]
    fn stamp(&self, pos: u64) -> u64 {
        (((pos >> self.shift) as u32).wrapping_add(1) as u64) << 32
    }

    /// Stores `e` unless the ring is full. Lock-free, no allocation, no syscall.
    #[inline]
    pub fn try_push(&self, e: &Entry) -> Result<(), Full> {
        let cap = self.slots.len() as u64;
        let mut tail = self.tail.load(Ordering::Relaxed);
        loop {
            let head = self.head.load(Ordering::Acquire);
            if tail.wrapping_sub(head) >= cap {
                return Err(Full);
            }
            match self.tail.compare_exchange_weak(
                tail,
                tail + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(current) => tail = current,
            }
        }
        let w = &self.slots[(tail & self.mask) as usize].0;
        w[0].store(e.seq, Ordering::Relaxed);
        w[1].store(0, Ordering::Relaxed);
        w[2].store(e.ticks, Ordering::Relaxed);
        w[3].store(
            e.kind as u64
                | (e.flags as u64) << 8
                | (e.code as u64) << 16
                | (e.thread_id as u64) << 32,
            Ordering::Relaxed,
        );
        w[4].store(e.a as u64, Ordering::Relaxed);
        w[5].store(e.b as u64, Ordering::Relaxed);
        w[6].store(e.c, Ordering::Relaxed);
        w[7].store(e.symbol_id as u64 | self.stamp(tail), Ordering::Release);
        Ok(())
    }

    /// The single consumer handle; `None` if it was already taken.
    pub fn consumer(self: &Arc<Self>) -> Option<Consumer> {
        if self.consumer_taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(Consumer {
            ring: Arc::clone(self),
        })
    }
}

/// The only reader of a [`Ring`] (hence `&mut self`).
pub struct Consumer {
    ring: Arc<Ring>,
}

impl Consumer {
    /// The ring this consumer reads.
    pub fn ring(&self) -> &Arc<Ring> {
        &self.ring
    }

    /// Hands up to `max` published entries, oldest first, to `f`, then frees their slots.
    /// Stops early at a claimed but unpublished slot. Returns how many were consumed.
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(&Entry)) -> usize {
        let ring = &*self.ring;
        let head = ring.head.load(Ordering::Relaxed);
        let mut pos = head;
        let end = head.saturating_add(max as u64);
        while pos < end {
            let w = &ring.slots[(pos & ring.mask) as usize].0;
            let last = w[7].load(Ordering::Acquire);
            if last & 0xFFFF_FFFF_0000_0000 != ring.stamp(pos) {
                break;
            }
            let meta = w[3].load(Ordering::Relaxed);
            let e = Entry {
                seq: w[0].load(Ordering::Relaxed),
                ticks: w[2].load(Ordering::Relaxed),
                kind: meta as u8,
                flags: (meta >> 8) as u8,
                code: (meta >> 16) as u16,
                thread_id: (meta >> 32) as u32,
                a: w[4].load(Ordering::Relaxed) as i64,
                b: w[5].load(Ordering::Relaxed) as i64,
                c: w[6].load(Ordering::Relaxed),
                symbol_id: last as u32,
            };
            f(&e);
            pos += 1;
        }
        if pos != head {
            ring.head.store(pos, Ordering::Release);
        }
        (pos - head) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn entry(seq: u64) -> Entry {
        Entry {
            seq,
            ticks: seq * 3,
            kind: 2,
            a: -(seq as i64),
            c: seq,
            symbol_id: seq as u32,
            ..Default::default()
        }
    }

    #[test]
    fn empty_full_and_wrap_around() {
        let ring = Ring::new(4);
        let mut c = ring.consumer().expect("first consumer");
        assert!(ring.consumer().is_none(), "only one consumer");
        assert_eq!(c.drain(10, |_| panic!("empty ring yields nothing")), 0);
        ring.try_push(&entry(0)).expect("room");
        assert_eq!(
            c.drain(usize::MAX, |_| {}),
            1,
            "an unbounded drain takes what is there"
        );
        let mut next = 1u64;
        let mut expect = 1u64;
        for round in 0..10 {
            for _ in 0..4 {
                ring.try_push(&entry(next)).expect("room");
                next += 1;
            }
            assert_eq!(
                ring.try_push(&entry(999)),
                Err(Full),
                "round {round}: full after 4"
            );
            assert_eq!(ring.len(), 4);
            let n = c.drain(3, |e| {
                assert_eq!(*e, entry(expect));
                expect += 1;
            });
            assert_eq!(n, 3);
            ring.try_push(&entry(next)).expect("one slot freed");
            next += 1;
            c.drain(usize::MAX >> 1, |e| {
                assert_eq!(*e, entry(expect));
                expect += 1;
            });
            assert!(ring.is_empty());
        }
        assert_eq!(expect, next);
    }

    #[test]
    fn many_producers_every_entry_exactly_once() {
        // Miri runs the same protocol at a size it can finish (it checks data races and
        // atomic orderings on every access, so a few hundred entries exercise the protocol).
        const THREADS: u64 = if cfg!(miri) { 3 } else { 8 };
        const PER_THREAD: u64 = if cfg!(miri) { 60 } else { 200_000 };
        let ring = Ring::new(if cfg!(miri) { 8 } else { 1024 });
        let mut consumer = ring.consumer().expect("consumer");
        let producers: Vec<_> = (0..THREADS)
            .map(|t| {
                let ring = Arc::clone(&ring);
                std::thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        let e = entry(t * PER_THREAD + i);
                        while ring.try_push(&e).is_err() {
                            std::hint::spin_loop();
                        }
                    }
                })
            })
            .collect();
        let mut seen = HashSet::with_capacity((THREADS * PER_THREAD) as usize);
        let mut last_per_thread = vec![None::<u64>; THREADS as usize];
        while seen.len() < (THREADS * PER_THREAD) as usize {
            consumer.drain(512, |e| {
                assert_eq!(*e, entry(e.seq), "entry intact");
                assert!(seen.insert(e.seq), "duplicate seq {}", e.seq);
                let t = (e.seq / PER_THREAD) as usize;
                assert!(
                    last_per_thread[t].is_none_or(|l| l < e.seq),
                    "per-producer order"
                );
                last_per_thread[t] = Some(e.seq);
            });
        }
        for p in producers {
            p.join().expect("producer");
        }
        assert_eq!(consumer.drain(10, |_| {}), 0, "nothing extra");
    }
}
