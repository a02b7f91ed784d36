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
//! This file holds [`Logger`], its accessors, close and fork handling; the hot path
//! ([`Logger::append`] and the `audit*` calls) is in `append.rs`, the `flush*` waits in
//! `flush.rs`, [`Logger::open`] in `open.rs`, and the flusher, sink, chainer, syncer,
//! recovery, drop tracker and `stats.bin` in their own files.
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

mod append;
mod chainer;
mod config;
mod direct;
mod drops;
mod flush;
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
