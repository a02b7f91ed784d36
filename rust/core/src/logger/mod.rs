//! The audit logger: two rings, one sequence counter, one flusher thread, the drop
//! accounting and the segment sink; or, with [`Engine::Direct`], the same sink written by the
//! caller itself under a mutex (the rollback engine: no rings, no threads).
//!
//! The hot path ([`Logger::append`]) is: a closed check (one load), one `fetch_add` for the
//! sequence number, one `rdtsc`, a CAS to claim a ring slot and eight stores. No lock, no
//! allocation, no syscall. Everything else happens on the flusher thread, which drains the
//! emergency ring as soon as a record arrives and the main ring every `flush_interval`
//! (default 2 ms, sooner when a quarter full or a flush is requested). Between passes it idles
//! as [`crate::idle`] describes: it parks when there is nothing to do, and a kill-switch record
//! (or a main ring past a quarter full, a flush, a close) wakes it.
//!
//! This file holds [`Logger`] and its public API; [`Logger::open`] is in `open.rs`, and the
//! flusher, sink, chainer, syncer, recovery, drop tracker and `stats.bin` in their own files.
use crate::chain::ChainHead;
use crate::clock::{self, Calibration};
use crate::idle::{Backoff, IdleStrategy, Waker};
use crate::reader::{self, ReadError};
use crate::record::{kind, Record, FLAG_EMERGENCY, FLAG_SYSTEM, RECORD_SIZE};
use crate::ring::{Consumer, Entry, Ring};
use crate::segment::{
    self, header_u32, header_u64, off, DirError, LogDir, PreparedSegment, SegmentWriter,
    FLAG_CLOSED, FLAG_KEYED, HEADER_SIZE, MAGIC,
};
use crossbeam_utils::CachePadded;
use std::cell::Cell;
use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod chainer;
mod config;
mod direct;
mod drops;
mod flusher;
mod open;
mod recover;
pub mod settings;
mod shared;
mod sink;
mod stats_file;
mod syncer;
mod sys;

use self::{
    chainer::*, direct::*, drops::*, flusher::*, recover::*, shared::*, sink::*, stats_file::*,
    syncer::*, sys::*,
};
pub use config::{
    AppendError, AuditError, Engine, LoggerConfig, OpenError, OverflowPolicy, RingId, Stats,
};
pub use flusher::SEQ_LIMIT;
pub use sys::{clock_sync_state, ClockSync};

/// An audit logger writing to one directory.
pub struct Logger {
    shared: Arc<Shared>,
    flusher: Mutex<Option<JoinHandle<()>>>,
    recovery_notes: Vec<String>,
    /// Process that opened the logger (and owns its flusher and files).
    owner_pid: u32,
    /// Set by [`Logger::abandon`] in the child of a `fork()`.
    abandoned: AtomicBool,
    /// The directory, `flock`ed exclusively until close (by either engine): two writers on
    /// one directory would interleave segments and break the chain.
    dir_lock: Mutex<Option<std::fs::File>>,
    /// The direct engine's writer ([`Engine::Direct`]); `None` inside once closed.
    direct: Option<Mutex<Option<Direct>>>,
}

fn lock_directory(dir: &Path) -> Result<std::fs::File, OpenError> {
    let handle = std::fs::File::open(dir).map_err(|e| OpenError::Io(dir.to_path_buf(), e))?;
    // SAFETY: plain syscall on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(handle.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return Err(if err.kind() == io::ErrorKind::WouldBlock {
            OpenError::Locked(dir.to_path_buf())
        } else {
            OpenError::Io(dir.to_path_buf(), err)
        });
    }
    Ok(handle)
}

/// (device, inode) of the locked directory.
fn lock_identity(handle: &std::fs::File) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    handle.metadata().ok().map(|m| (m.dev(), m.ino()))
}

impl Logger {
    /// What recovery found in the directory (unclosed segments sealed, damage skipped).
    pub fn recovery_notes(&self) -> &[String] {
        &self.recovery_notes
    }

    /// Which engine writes the records.
    pub fn engine(&self) -> Engine {
        self.shared.config.engine
    }

    /// The directory written.
    pub fn directory(&self) -> &Path {
        &self.shared.config.directory
    }

    /// The hash chain's HMAC key (None: plain SHA-256), for restore's chain checks.
    pub fn hmac_key(&self) -> Option<&[u8]> {
        self.shared.config.hmac_key.as_deref()
    }

    /// Appends a record. The hot path: no lock, no allocation, no syscall.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn append(
        &self,
        ring: RingId,
        kind: u8,
        code: u16,
        symbol_id: u32,
        a: i64,
        b: i64,
        c: u64,
    ) -> Result<u64, AppendError> {
        let s = &*self.shared;
        if s.closed.load(Ordering::Relaxed) {
            return Err(AppendError::Closed);
        }
        if let Some(direct) = &self.direct {
            return self.append_direct(direct, ring, kind, code, symbol_id, a, b, c);
        }
        let seq = s.seq.fetch_add(1, Ordering::Relaxed);
        if seq >= s.seq_reserved.load(Ordering::Relaxed) {
            return self.unreserved(ring, seq);
        }
        let entry = Entry {
            seq,
            ticks: clock::ticks(),
            kind,
            flags: if ring == RingId::Emergency {
                FLAG_EMERGENCY
            } else {
                0
            },
            code,
            thread_id: thread_id(),
            a,
            b,
            c,
            symbol_id,
        };
        let r = &s.rings[ring as usize];
        if r.try_push(&entry).is_ok() {
            if ring == RingId::Emergency {
                // A halt must reach the file within the persist goal after any quiet.
                s.flusher_waker.wake_if_parked();
            } else if s.flusher_waker.is_parked() && r.len() * 4 >= r.capacity() {
                // Main-ring records wait for the park timeout, unless the ring fills up.
                s.flusher_waker.wake();
            }
            return Ok(seq);
        }
        self.overflow(ring, &entry)
    }

    /// [`Engine::Direct`]: the caller writes its record itself. Under the mutex, so the seq
    /// order is the file order; committed (`pwrite` of the record, then of `committed`) before
    /// it returns, so a record whose seq was returned survives `kill -9`.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn append_direct(
        &self,
        direct: &Mutex<Option<Direct>>,
        ring: RingId,
        kind: u8,
        code: u16,
        symbol_id: u32,
        a: i64,
        b: i64,
        c: u64,
    ) -> Result<u64, AppendError> {
        let s = &*self.shared;
        if self.in_forked_child() {
            // A fork from C (no at-fork hook ran): the segment is the parent's, and its
            // mutex may have been held at the fork. One getpid, beside two pwrites.
            return Err(AppendError::Closed);
        }
        let Ok(mut guard) = direct.lock() else {
            return Err(AppendError::Closed);
        };
        let Some(d) = guard.as_mut() else {
            return Err(AppendError::Closed);
        };
        let ticks = clock::ticks();
        d.tick();
        d.flusher.write_pending_system();
        let seq = s.seq.fetch_add(1, Ordering::Relaxed);
        if seq >= s.seq_reserved.load(Ordering::Relaxed) {
            // Here the writer raises the mark itself; it stays below only if that pwrite failed.
            d.flusher.raise_mark();
            if seq >= s.seq_reserved.load(Ordering::Relaxed) {
                drop(guard);
                return self.unreserved(ring, seq);
            }
        }
        let entry = Entry {
            seq,
            ticks,
            kind,
            flags: if ring == RingId::Emergency {
                FLAG_EMERGENCY
            } else {
                0
            },
            code,
            thread_id: thread_id(),
            a,
            b,
            c,
            symbol_id,
        };
        if !d.flusher.write_one(ring, &entry) {
            // No room (a full disk, and the reserve is for kill-switch records): counted and
            // declared by a GAP record, as a full ring is.
            s.drops[ring as usize].note(entry.seq);
            return Err(AppendError::Dropped(entry.seq));
        }
        s.counters.direct_written.fetch_add(1, Ordering::Relaxed);
        d.flusher.commit(false);
        Ok(entry.seq)
    }

    /// The counter reached the mark on file (the flusher is more than half a block behind):
    /// handing out this seq could repeat it after a crash, so the record is refused, counted
    /// and declared by a GAP record, like a ring overflow. The caller gets no seq.
    #[cold]
    fn unreserved(&self, ring: RingId, seq: u64) -> Result<u64, AppendError> {
        let s = &*self.shared;
        s.counters.seq_unreserved.fetch_add(1, Ordering::Relaxed);
        s.drops[ring as usize].note(seq);
        Err(AppendError::Dropped(seq))
    }

    #[cold]
    fn overflow(&self, ring: RingId, entry: &Entry) -> Result<u64, AppendError> {
        let s = &*self.shared;
        if let OverflowPolicy::Spin(limit) = s.config.overflow {
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                std::hint::spin_loop();
                if s.rings[ring as usize].try_push(entry).is_ok() {
                    return Ok(entry.seq);
                }
            }
        }
        s.drops[ring as usize].note(entry.seq);
        Err(AppendError::Dropped(entry.seq))
    }

    /// Audits a record of an application kind (1..=63; the rest are the logger's own). The one
    /// place that routes: KILL_SWITCH always goes through the emergency ring, however it is
    /// audited; `emergency` sends any other kind there too.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn audit(
        &self,
        kind: u8,
        code: u16,
        symbol_id: u32,
        a: i64,
        b: i64,
        c: u64,
        emergency: bool,
    ) -> Result<u64, AuditError> {
        if kind == 0 || kind >= kind::GAP {
            return Err(AuditError::NotApplicationKind(kind));
        }
        let ring = if emergency || kind == kind::KILL_SWITCH {
            RingId::Emergency
        } else {
            RingId::Main
        };
        self.append(ring, kind, code, symbol_id, a, b, c)
            .map_err(AuditError::Append)
    }

    /// A kill-switch record, through the emergency ring.
    #[inline]
    pub fn audit_kill_switch(
        &self,
        reason: u16,
        symbol_id: u32,
        position_size: i64,
        pnl_cents: i64,
    ) -> Result<u64, AppendError> {
        self.append(
            RingId::Emergency,
            kind::KILL_SWITCH,
            reason,
            symbol_id,
            position_size,
            pnl_cents,
            0,
        )
    }

    /// A trade record, through the main ring.
    #[inline]
    pub fn audit_trade(
        &self,
        symbol_id: u32,
        quantity: i64,
        price_cents: i64,
        order_id: u64,
    ) -> Result<u64, AppendError> {
        self.append(
            RingId::Main,
            kind::TRADE,
            0,
            symbol_id,
            quantity,
            price_cents,
            order_id,
        )
    }

    /// Waits until every record appended before the call is committed to the file
    /// (`durable`: and fdatasync'ed). `None` waits as long as it takes. True when reached.
    pub fn flush(&self, timeout: Option<Duration>, durable: bool) -> bool {
        self.flush_with(timeout, durable, false)
    }

    /// As [`Logger::flush`]; with `chained`, also waits until the `chain_head` and
    /// `chain_records` written in the segment header cover every record appended before the
    /// call (the chainer is nudged, so this takes about a millisecond, not a poll period).
    pub fn flush_with(&self, timeout: Option<Duration>, durable: bool, chained: bool) -> bool {
        if self.in_forked_child() {
            return false; // a forked child: nothing of this process will ever be flushed here
        }
        if let Some(direct) = &self.direct {
            return self.flush_direct(direct, durable, chained);
        }
        let s = &*self.shared;
        let targets = [s.rings[0].claimed(), s.rings[1].claimed()];
        let positions = if durable {
            &s.counters.durable_pos
        } else {
            &s.counters.committed_pos
        };
        let reached = || {
            positions[0].load(Ordering::Acquire) >= targets[0]
                && positions[1].load(Ordering::Acquire) >= targets[1]
        };
        let waiter = Waiter::new(timeout);
        loop {
            s.wake_flusher();
            if durable {
                s.sync_requested.store(true, Ordering::Release);
            }
            if reached() {
                break;
            }
            if waiter.expired() {
                return false;
            }
            if self.flusher_gone() {
                // Closed: close() drained everything that could be drained.
                if reached() {
                    break;
                }
                return false;
            }
            waiter.pause();
        }
        if !chained {
            return true;
        }
        // Our records end at or before this point (stored before `committed_pos`).
        let point = s.counters.committed_point.load(Ordering::Acquire);
        let chained_to = || s.counters.chained_point.load(Ordering::Acquire) >= point;
        let mut nudged = Instant::now();
        s.nudge_chainer();
        loop {
            if chained_to() {
                return true;
            }
            if waiter.expired() {
                return false;
            }
            if self.flusher_gone() {
                return chained_to();
            }
            if nudged.elapsed() >= Duration::from_micros(500) {
                s.nudge_chainer();
                nudged = Instant::now();
            }
            waiter.pause();
        }
    }

    /// Waits until every record appended to the EMERGENCY ring before the call is committed
    /// to the segment file (written, and covered by the header's `committed`: it survives
    /// `kill -9` from then on), without waiting for the main ring. False on timeout (a full
    /// disk keeps them in the ring) or in a forked child.
    pub fn flush_emergency(&self, timeout: Option<Duration>) -> bool {
        if self.in_forked_child() {
            return false;
        }
        if let Some(direct) = &self.direct {
            // Every returned record is committed already; `durable_kill_switch` asks for the
            // fdatasync a ring engine's syncer would do after kill-switch records.
            let durable = self.shared.config.durable_kill_switch;
            return self.flush_direct(direct, durable, false);
        }
        let s = &*self.shared;
        let target = s.rings[RingId::Emergency as usize].claimed();
        let pos = &s.counters.committed_pos[RingId::Emergency as usize];
        let waiter = Waiter::new(timeout);
        s.wake_flusher();
        loop {
            if pos.load(Ordering::Acquire) >= target {
                return true;
            }
            if waiter.expired() {
                return false;
            }
            if self.flusher_gone() {
                return pos.load(Ordering::Acquire) >= target;
            }
            waiter.pause();
        }
    }

    /// The direct engine's flush: everything returned is committed already (unless a write
    /// failed: retried here); `durable` syncs and `chained` hashes inline. No timeout applies:
    /// the work is one `pwrite`, one `fdatasync` and the hashing of what is not chained yet.
    fn flush_direct(&self, direct: &Mutex<Option<Direct>>, durable: bool, chained: bool) -> bool {
        let Ok(mut guard) = direct.lock() else {
            return false;
        };
        let Some(d) = guard.as_mut() else {
            // Closed: close() wrote, chained and synced everything it could.
            return true;
        };
        let f = &mut d.flusher;
        f.write_pending_system();
        let mut ok = f.commit(durable);
        if chained {
            f.sink.chainer.catch_up(&f.shared);
            let c = &f.shared.counters;
            ok &= c.chained_point.load(Ordering::Acquire)
                >= c.committed_point.load(Ordering::Acquire);
        }
        ok
    }

    fn flusher_gone(&self) -> bool {
        self.flusher.lock().map(|h| h.is_none()).unwrap_or(true)
    }

    /// Test hook: stops the flusher from draining (a stalled sink) until resumed.
    /// (The direct engine has no flusher: this does nothing there.)
    pub fn set_paused(&self, paused: bool) {
        self.shared.paused.store(paused, Ordering::Release);
        self.shared.flusher_waker.wake();
    }

    /// True after [`Logger::close`].
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Marks the logger closed without draining: for the child of a `fork()`, where the
    /// flusher thread does not exist and the segment belongs to the parent.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
        self.shared.closed.store(true, Ordering::Release);
        // try_lock: a parent thread in flush() may have held this lock at the fork, and no
        // thread of the child will ever release it.
        if let Ok(mut h) = self.flusher.try_lock() {
            // The thread does not exist in a forked child: forget the handle, never join it.
            std::mem::forget(h.take());
        }
        if let Some(Ok(mut d)) = self.direct.as_ref().map(|d| d.try_lock()) {
            // The parent's files: never finished, sealed or unlinked from here.
            std::mem::forget(d.take());
        }
    }

    /// True in the child of a `fork()` once [`Logger::abandon`] ran: the logger belongs to
    /// process [`Logger::owner_pid`].
    pub fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }

    /// The process that opened this logger.
    pub fn owner_pid(&self) -> u32 {
        self.owner_pid
    }

    /// True in the child of a `fork()`, even one whose at-fork hook did not run (a fork from
    /// C code, or the hook skipped because a lock was held at the fork): then it abandons the
    /// logger now. Joining the flusher there would wait forever for a thread that does not
    /// exist in this process. One getpid: only for the cold paths (close, flush).
    fn in_forked_child(&self) -> bool {
        if self.is_abandoned() {
            return true;
        }
        if std::process::id() != self.owner_pid {
            self.abandon();
            return true;
        }
        false
    }

    /// Stops accepting records, drains both rings into the file, seals the segment and joins
    /// the flusher. Idempotent. Writers racing with close either get `Closed` or are persisted,
    /// provided they are not preempted for longer than the 2 ms quiet period close waits for.
    pub fn close(&self) {
        let s = &*self.shared;
        s.closed.store(true, Ordering::SeqCst);
        if self.in_forked_child() {
            return; // a forked child: the flusher and the files are the parent's
        }
        if let Some(direct) = &self.direct {
            // An append holds the mutex until its record is committed: each one either did
            // so before this, or finds the engine gone (Closed).
            let taken = direct.lock().ok().and_then(|mut d| d.take());
            if let Some(mut d) = taken {
                s.stop.store(true, Ordering::Release);
                d.flusher.finish();
            }
            drop(self.dir_lock.lock().ok().and_then(|mut l| l.take()));
            return;
        }
        let Some(handle) = self.flusher.lock().ok().and_then(|mut h| h.take()) else {
            return;
        };
        // Quiet period: writers that passed the closed check finish their push.
        let mut claimed = [s.rings[0].claimed(), s.rings[1].claimed()];
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < Duration::from_millis(2) {
            std::thread::sleep(Duration::from_micros(200));
            let now = [s.rings[0].claimed(), s.rings[1].claimed()];
            if now != claimed {
                claimed = now;
                quiet_since = Instant::now();
            }
        }
        s.paused.store(false, Ordering::Release);
        s.stop.store(true, Ordering::Release);
        s.flusher_waker.wake();
        let _ = handle.join();
        // Closing the descriptor releases the flock (never LOCK_UN: a forked child shares it).
        drop(self.dir_lock.lock().ok().and_then(|mut l| l.take()));
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Fill of (main, emergency) rings, 0..1.
    pub fn ring_fill(&self) -> [f64; 2] {
        let s = &*self.shared;
        [0, 1].map(|i| s.rings[i].len() as f64 / s.rings[i].capacity() as f64)
    }

    /// Dropped records of (main, emergency).
    pub fn dropped(&self) -> [u64; 2] {
        let s = &*self.shared;
        [0, 1].map(|i| s.drops[i].count.load(Ordering::Acquire))
    }
}

impl crate::monitor::RingProbe for Logger {
    fn ring_fill(&self) -> [f64; 2] {
        Logger::ring_fill(self)
    }

    fn dropped(&self) -> [u64; 2] {
        Logger::dropped(self)
    }

    fn sink_errors(&self) -> u64 {
        self.shared.counters.sink_errors.load(Ordering::Relaxed)
    }
}

impl Drop for Logger {
    fn drop(&mut self) {
        self.close();
    }
}

/// The wait of a caller in `flush*`: yields for the first 100 µs (the flusher answers within
/// its poll period, ~50 µs), then sleeps in 20 µs steps. A deadline past the end of `Instant`
/// (an absurd timeout) is no deadline.
struct Waiter {
    start: Instant,
    deadline: Option<Instant>,
}

impl Waiter {
    fn new(timeout: Option<Duration>) -> Waiter {
        let start = Instant::now();
        Waiter {
            start,
            deadline: timeout.and_then(|t| start.checked_add(t)),
        }
    }

    fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    fn pause(&self) {
        if self.start.elapsed() < Duration::from_micros(100) {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(20));
        }
    }
}
