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

/// Which ring a record goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingId {
    /// Everything but kill-switch records.
    Main = 0,
    /// Kill-switch and halt/reset state records: drained first, never affected by the main ring.
    Emergency = 1,
}

/// What happens when a ring is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverflowPolicy {
    /// Drop the record at once, count it, and let the flusher write a GAP record (default).
    Drop,
    /// Retry for at most this long, then drop as above.
    Spin(Duration),
}

/// Who writes the records into the segment files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The caller pushes into a ring; the flusher, chainer and syncer threads do the rest
    /// (the default: no lock, no syscall on the caller's path).
    Rings,
    /// The rollback engine (YAML `audit_system.engine: direct`): each call encodes its record
    /// and writes it with `pwrite` itself, under a mutex, before it returns. No rings and no
    /// threads. The chain head is brought up to date inline every `flush_interval` (by the
    /// call that comes then), at `flush(chained)`, a roll and `close`; `fdatasync` (of the
    /// current and any rolled segment) at `flush(durable)`, `flush_emergency` (with
    /// `durable_kill_switch`) and `close`. Same files, same chain, same reader and recovery;
    /// a call costs a few µs (two `pwrite`s).
    Direct,
}

/// Logger settings (the YAML `audit_system` section, validated by the Python layer).
#[derive(Debug, Clone)]
pub struct LoggerConfig {
    /// Directory of the segment files (created if missing).
    pub directory: PathBuf,
    /// Main ring slots (power of two).
    pub main_capacity: usize,
    /// Emergency ring slots (power of two).
    pub emergency_capacity: usize,
    /// Main-ring drain period.
    pub flush_interval: Duration,
    /// Emergency-ring poll period (bounds kill-switch persist latency).
    pub emergency_poll: Duration,
    /// Segment size in bytes (rounded down to whole records).
    pub segment_bytes: u64,
    /// Ring-full policy.
    pub overflow: OverflowPolicy,
    /// msync emergency-ring records as soon as they are written.
    pub durable_kill_switch: bool,
    /// HMAC key for the hash chain (plain SHA-256 when `None`).
    pub hmac_key: Option<Vec<u8>>,
    /// How often to write a CLOCK record.
    pub clock_check_interval: Duration,
    /// Mode of the files the logger creates (exactly this, whatever the umask).
    pub file_mode: u32,
    /// Mode of the log directory when the logger creates it.
    pub dir_mode: u32,
    /// How the flusher waits between passes (YAML `audit_system.idle_strategy`).
    pub idle_strategy: IdleStrategy,
    /// Rings and threads, or the caller writes (YAML `audit_system.engine`).
    pub engine: Engine,
}

impl LoggerConfig {
    /// Defaults of docs and config, writing into `directory`.
    pub fn new(directory: impl Into<PathBuf>) -> LoggerConfig {
        LoggerConfig {
            directory: directory.into(),
            main_capacity: 131_072,
            emergency_capacity: 16_384,
            flush_interval: Duration::from_millis(2),
            emergency_poll: Duration::from_micros(50),
            segment_bytes: 64 << 20,
            overflow: OverflowPolicy::Drop,
            durable_kill_switch: true,
            hmac_key: None,
            clock_check_interval: Duration::from_secs(1),
            file_mode: segment::DEFAULT_FILE_MODE,
            dir_mode: segment::DEFAULT_DIR_MODE,
            idle_strategy: IdleStrategy::Backoff,
            engine: Engine::Rings,
        }
    }

    fn segment_records(&self) -> u64 {
        (self.segment_bytes.saturating_sub(HEADER_SIZE as u64) / RECORD_SIZE as u64).max(64)
    }
}

/// Why a logger could not start.
#[derive(Debug)]
pub enum OpenError {
    /// A setting is out of range.
    Config(String),
    /// The directory or first segment could not be created.
    Io(PathBuf, io::Error),
    /// Another logger (in this or another process, either engine) holds the directory.
    Locked(PathBuf),
    /// The directory is not a safe place for an audit log (not a directory, world-writable,
    /// owned by another user); the message names it and says why.
    Refused(String),
    /// The log path exists and is not a directory.
    NotADirectory(String),
    /// The HMAC key does not fit the directory (missing, wrong, or a keyed writer on an
    /// unkeyed log); the message names the directory and what to do.
    Key(String),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Config(why) => write!(f, "{why}"),
            OpenError::Io(path, e) => write!(f, "{}: {e}", path.display()),
            OpenError::Locked(path) => {
                write!(
                    f,
                    "{}: another audit logger holds this directory",
                    path.display()
                )
            }
            OpenError::Refused(why) | OpenError::NotADirectory(why) | OpenError::Key(why) => {
                write!(f, "{why}")
            }
        }
    }
}

impl std::error::Error for OpenError {}

/// Why an append did not store the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendError {
    /// The ring was full: the record (this seq) was dropped, counted, and will be GAP-recorded.
    Dropped(u64),
    /// The logger is closed.
    Closed,
}

/// Counters of a logger, as `get_stats()` shows them.
#[derive(Debug, Clone, Default, PartialEq)]
#[allow(missing_docs)]
pub struct Stats {
    pub records_written: u64,
    pub records_flushed: u64,
    pub dropped_main: u64,
    pub dropped_emergency: u64,
    pub main_ring_len: u64,
    pub main_ring_capacity: u64,
    pub emergency_ring_len: u64,
    pub emergency_ring_capacity: u64,
    pub flushes: u64,
    pub bytes_written: u64,
    pub segments: u64,
    pub sink_errors: u64,
    pub last_seq: u64,
    pub durable_syncs: u64,
    /// Appends refused because the sequence counter reached the `seq_reserved` mark on file
    /// (the flusher fell that far behind): counted as dropped and GAP-recorded.
    pub seq_unreserved: u64,
    /// 0 synchronised, 1 not, 2 unknown (from the latest CLOCK record).
    pub clock_state: u64,
    /// Times the flusher parked (idle; a quiet logger parks a few times a second).
    pub flusher_parks: u64,
    /// Times a producer (kill-switch record, full ring, flush, close) woke the parked flusher.
    pub flusher_wakes: u64,
}

/// Lost sequence numbers of one ring since the flusher last reported them.
///
/// A producer notes a drop as `busy += 1; first = min; last = max; count += 1; busy -= 1`
/// (all SeqCst: this is the cold path). The flusher reports a GAP only from a snapshot no
/// note was in the middle of (see [`Flusher::note_gaps`]), so every seq a GAP counts lies in
/// its `[first, last]` and no count exceeds its range (docs/FORMAT.md, sequence accounting).
struct DropTracker {
    count: AtomicU64,
    first: AtomicU64,
    last: AtomicU64,
    /// Notes in progress.
    busy: AtomicU64,
}

impl DropTracker {
    fn new() -> DropTracker {
        DropTracker {
            count: AtomicU64::new(0),
            first: AtomicU64::new(u64::MAX),
            last: AtomicU64::new(0),
            busy: AtomicU64::new(0),
        }
    }

    /// Range first, count last, so a GAP that counts a seq always covers it.
    #[cold]
    fn note(&self, seq: u64) {
        self.busy.fetch_add(1, Ordering::SeqCst);
        self.first.fetch_min(seq, Ordering::SeqCst);
        self.last.fetch_max(seq, Ordering::SeqCst);
        self.count.fetch_add(1, Ordering::SeqCst);
        self.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct Counters {
    records_flushed: AtomicU64,
    flushes: AtomicU64,
    bytes_written: AtomicU64,
    segments: AtomicU64,
    sink_errors: AtomicU64,
    durable_syncs: AtomicU64,
    clock_state: AtomicU64,
    /// Ring positions (per ring) whose records are committed to the file.
    committed_pos: [AtomicU64; 2],
    /// Ring positions (per ring) whose records are durable.
    durable_pos: [AtomicU64; 2],
    /// Where the records committed so far end: `segment index << 40 | records` (see
    /// [`chain_point`]); stored before `committed_pos`, so a reader of `committed_pos` finds
    /// a point at or after its records.
    committed_point: AtomicU64,
    /// Same encoding: how far the chain head published in the file reaches.
    chained_point: AtomicU64,
    seq_unreserved: AtomicU64,
    /// Records the direct engine stored (the rings' `claimed` counts the ring engine's).
    direct_written: AtomicU64,
}

/// `(segment index, records)` packed so that later points compare greater: segments hold
/// fewer than 2**40 records (4096 MiB / 64 B = 2**26).
fn chain_point(index: u64, records: u64) -> u64 {
    (index << 40) | records.min((1 << 40) - 1)
}

/// Makes segment files durable (`fdatasync`) on its own thread, so the flusher never waits
/// for the disk. Requests coalesce: a burst of kill switches costs one sync.
struct Syncer {
    pending: Mutex<(Vec<std::fs::File>, Option<[u64; 2]>, bool)>,
    wake: std::sync::Condvar,
}

impl Syncer {
    fn new() -> Syncer {
        Syncer {
            pending: Mutex::new((Vec::new(), None, false)),
            wake: std::sync::Condvar::new(),
        }
    }

    /// Queues `file` for a sync; `positions` (ring cursors) become durable once it is done.
    fn post(&self, file: std::fs::File, positions: Option<[u64; 2]>) {
        if let Ok(mut p) = self.pending.lock() {
            p.0.push(file);
            if positions.is_some() {
                p.1 = positions;
            }
            self.wake.notify_one();
        }
    }

    fn stop(&self) {
        if let Ok(mut p) = self.pending.lock() {
            p.2 = true;
            self.wake.notify_one();
        }
    }

    fn run(&self, counters: &Counters) {
        run_only_when_idle();
        loop {
            let (files, positions, stop) = {
                let Ok(mut p) = self.pending.lock() else {
                    return;
                };
                while p.0.is_empty() && !p.2 {
                    p = match self.wake.wait(p) {
                        Ok(p) => p,
                        Err(_) => return,
                    };
                }
                (std::mem::take(&mut p.0), p.1.take(), p.2)
            };
            if files.is_empty() {
                if stop {
                    return;
                }
                continue;
            }
            let mut ok = true;
            for f in &files {
                ok &= f.sync_data().is_ok();
            }
            if ok {
                counters.durable_syncs.fetch_add(1, Ordering::Relaxed);
                if let Some(positions) = positions {
                    for (pos, value) in counters.durable_pos.iter().zip(positions) {
                        pos.fetch_max(value, Ordering::Release);
                    }
                }
            } else {
                counters.sink_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

struct Shared {
    syncer: Syncer,
    seq: CachePadded<AtomicU64>,
    /// The `seq_reserved` mark known to be on file: no seq at or above it is handed out
    /// (see [`SEQ_BLOCK`]). Written by the flusher only after the `pwrite` succeeded.
    seq_reserved: CachePadded<AtomicU64>,
    /// Wakes the chainer (a chained flush wants its head now, not in a millisecond).
    chain_nudge: OnceLock<std::sync::mpsc::Sender<ChainMsg>>,
    /// The chainer's waker (set when it starts), so a nudge also unparks it.
    chain_waker: OnceLock<Arc<Waker>>,
    rings: [Arc<Ring>; 2],
    drops: [DropTracker; 2],
    closed: AtomicBool,
    stop: AtomicBool,
    paused: AtomicBool,
    flush_requested: AtomicBool,
    sync_requested: AtomicBool,
    counters: Counters,
    config: LoggerConfig,
    /// Wakes the parked flusher. Padded: the flusher writes `parked` at every park, and the
    /// producers' `closed`/`seq` loads must not share its line.
    flusher_waker: CachePadded<Waker>,
}

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

/// The direct engine: the flusher's sink and system records, driven by the callers.
struct Direct {
    flusher: Flusher,
    /// When the periodic work (CLOCK record, GAPs, the seq mark) is next due.
    next_tick: Instant,
    /// When `stats.bin` was last written.
    last_publish: Option<Instant>,
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

thread_local! {
    static THREAD_ID: Cell<u32> = const { Cell::new(0) };
}

#[inline]
fn thread_id() -> u32 {
    THREAD_ID.with(|id| {
        let cached = id.get();
        if cached != 0 {
            return cached;
        }
        // SAFETY: gettid has no preconditions; it is called once per thread.
        let tid = unsafe { libc::gettid() } as u32;
        id.set(tid);
        tid
    })
}

/// Where the previous run of a directory left off.
struct Recovered {
    next_index: u64,
    next_seq: u64,
    prev_chain: ChainHead,
    notes: Vec<String>,
}

fn key_help(dir: &Path) -> String {
    format!(
        "give the key of {} as hex in the environment variable named by the config key \
         audit_system.hmac_key_env (default KILLSWITCH_AUDIT_HMAC_KEY), or as hmac_key=",
        dir.display()
    )
}

/// Reads every segment header: keyed or not, the highest `seq_reserved` mark, and checks the
/// key against the last closed segment. Returns the highest sane mark.
fn check_headers(
    dir: &LogDir,
    segments: &[(u64, PathBuf)],
    key: Option<&[u8]>,
    notes: &mut Vec<String>,
) -> Result<u64, OpenError> {
    let path = dir.path();
    let mut mark = 0u64;
    let (mut keyed, mut unkeyed) = (None, None);
    let mut last_closed = None;
    for (_, seg_path) in segments {
        let name = seg_path.file_name().unwrap_or_default().to_string_lossy();
        // Unreadable or foreign files: the reader below reports them.
        let Ok(file) = dir.open_rw(&name) else {
            continue;
        };
        let Ok(h) = segment::read_header(&file) else {
            continue;
        };
        if &h[..8] != MAGIC {
            continue;
        }
        let flags = header_u32(&h, off::FLAGS);
        if flags & FLAG_KEYED != 0 {
            keyed.get_or_insert_with(|| seg_path.clone());
        } else {
            unkeyed.get_or_insert_with(|| seg_path.clone());
        }
        let m = header_u64(&h, off::SEQ_RESERVED);
        if m >= SEQ_LIMIT {
            notes.push(format!(
                "{}: offset {}: seq_reserved {m} is beyond any real counter (damage or \
                 forgery); not used for the sequence counter",
                seg_path.display(),
                off::SEQ_RESERVED
            ));
        } else {
            mark = mark.max(m);
        }
        if flags & FLAG_CLOSED != 0 {
            last_closed = Some((file, seg_path.clone()));
        }
    }
    match (key, keyed, unkeyed) {
        (None, Some(k), _) => {
            return Err(OpenError::Key(format!(
                "{}: the audit log is HMAC-keyed ({} has the KEYED flag) and no key was given: \
                 {}",
                path.display(),
                k.display(),
                key_help(path)
            )))
        }
        (Some(_), _, Some(u)) => {
            return Err(OpenError::Key(format!(
                "{}: an HMAC key was given but this audit log is not keyed ({} is plain \
                 SHA-256): a directory is keyed from its first segment on, so that a cleared \
                 KEYED flag is always tampering; start keyed logging in a new directory",
                path.display(),
                u.display()
            )))
        }
        _ => {}
    }
    if let (Some(k), Some((file, seg_path))) = (key, last_closed) {
        let verifies = segment::writer_chain_verifies(&file, Some(k))
            .map_err(|e| OpenError::Io(seg_path.clone(), e))?;
        if verifies != Some(true) {
            return Err(OpenError::Key(format!(
                "{}: offset {}: the chain head of this closed segment does not verify with \
                 the given HMAC key: the key is wrong (or the segment was altered; run \
                 `killswitch-audit verify`); {}",
                seg_path.display(),
                off::CHAIN_HEAD,
                key_help(path)
            )));
        }
    }
    Ok(mark)
}

/// At most this many "record above the mark" notes per segment.
const MAX_SEQ_NOTES: usize = 3;

fn recover(dir: &LogDir, key: Option<&[u8]>) -> Result<Recovered, OpenError> {
    let path = dir.path();
    let io_err = |e| OpenError::Io(path.to_path_buf(), e);
    segment::remove_stale_prepared(dir).map_err(io_err)?;
    let segments = reader::list_segments(path).map_err(io_err)?;
    let mut out = Recovered {
        next_index: 0,
        next_seq: 0,
        prev_chain: [0; 32],
        notes: Vec::new(),
    };
    let Some((last_index, _)) = segments.last() else {
        return Ok(out);
    };
    // The next session starts at or above every mark a writer put on file: it handed out no
    // seq at or above its mark, and may have handed out any below it.
    out.next_seq = check_headers(dir, &segments, key, &mut out.notes)?;
    out.next_index = last_index + 1;
    for (pos, (_, seg_path)) in segments.iter().enumerate().rev() {
        let is_last = pos + 1 == segments.len();
        match reader::read_segment(seg_path) {
            Ok(seg) => {
                let mark = segment_mark(dir, seg_path);
                let limit = if mark == 0 { SEQ_LIMIT } else { mark };
                let mut bad = 0;
                for (i, r) in seg.records.iter().enumerate() {
                    if r.seq < limit {
                        out.next_seq = out.next_seq.max(r.seq + 1);
                        continue;
                    }
                    bad += 1;
                    if bad <= MAX_SEQ_NOTES {
                        out.notes.push(format!(
                            "{}: offset {}: record seq {} is at or above the segment's \
                             seq_reserved mark {limit}: damage or forgery, not used for the \
                             sequence counter",
                            seg_path.display(),
                            HEADER_SIZE + i * RECORD_SIZE,
                            r.seq
                        ));
                    }
                }
                if bad > MAX_SEQ_NOTES {
                    out.notes.push(format!(
                        "{}: {} more record(s) above the seq_reserved mark",
                        seg_path.display(),
                        bad - MAX_SEQ_NOTES
                    ));
                }
                if seg.header.first_seq < limit {
                    out.next_seq = out.next_seq.max(seg.header.first_seq);
                }
                if is_last {
                    out.prev_chain = if seg.header.is_closed() {
                        seg.header.chain_head
                    } else {
                        let valid = seg.records.len() as u64;
                        out.notes.push(format!(
                            "{}: not closed (writer died); sealed at {valid} records{}",
                            seg_path.display(),
                            seg.torn_at
                                .map(|o| format!(", torn record at offset {o} cut off"))
                                .unwrap_or_default()
                        ));
                        let sealed = segment::seal_after_crash(dir, seg_path, valid, key)
                            .map_err(|e| OpenError::Io(seg_path.clone(), e))?;
                        seal_notes(&mut out.notes, seg_path, valid, &sealed);
                        sealed.head
                    };
                }
                if !seg.records.is_empty() {
                    break;
                }
            }
            Err(e @ ReadError::Corrupt { .. }) | Err(e @ ReadError::Io { .. }) => {
                out.notes.push(format!("{e}; continuing after it"));
                if is_last {
                    // The chain cannot continue from a damaged segment: verify will show the break.
                    out.next_seq = out.next_seq.max(1 << 40);
                }
                break;
            }
        }
    }
    Ok(out)
}

/// The `seq_reserved` mark of one segment (0: none, or unreadable).
fn segment_mark(dir: &LogDir, seg_path: &Path) -> u64 {
    let name = seg_path.file_name().unwrap_or_default().to_string_lossy();
    dir.open_rw(&name)
        .and_then(|f| segment::read_header(&f))
        .map(|h| header_u64(&h, off::SEQ_RESERVED))
        .map(|m| if m >= SEQ_LIMIT { 0 } else { m })
        .unwrap_or(0)
}

fn seal_notes(notes: &mut Vec<String>, path: &Path, valid: u64, s: &segment::SealReport) {
    if !s.writer_chain_ok {
        notes.push(format!(
            "{}: offset {}: the dead writer's own chain head over its {} record(s) does not \
             verify (damage, tampering or a wrong key); sealed with writer_chained = 0: none \
             of its records can lift a halt",
            path.display(),
            off::CHAIN_HEAD,
            s.claimed_chained
        ));
    }
    if s.writer_chained < valid {
        notes.push(format!(
            "{}: offset {}: records {}..{valid} were never chained by their writer: readable, \
             but they cannot lift a halt",
            path.display(),
            HEADER_SIZE as u64 + s.writer_chained * RECORD_SIZE as u64,
            s.writer_chained
        ));
    }
}

impl Logger {
    /// Opens (or continues) the log in `config.directory` and starts the flusher.
    pub fn open(config: LoggerConfig) -> Result<Logger, OpenError> {
        for (name, cap) in [
            ("buffer_size", config.main_capacity),
            ("emergency_buffer_size", config.emergency_capacity),
        ] {
            if !cap.is_power_of_two() || !(64..=1 << 26).contains(&cap) {
                return Err(OpenError::Config(format!(
                    "{name} must be a power of two in 64..=2**26, got {cap}"
                )));
            }
        }
        // Bounded so that `Instant + interval` can never overflow (a panic on the flusher).
        let day = Duration::from_secs(86_400);
        for (name, d) in [
            ("flush_interval", config.flush_interval),
            ("emergency_poll", config.emergency_poll),
            ("clock_check_interval", config.clock_check_interval),
        ] {
            if d.is_zero() || d > day {
                return Err(OpenError::Config(format!(
                    "{name} must be > 0 and at most one day, got {d:?}"
                )));
            }
        }
        for (name, mode) in [
            ("file_mode", config.file_mode),
            ("dir_mode", config.dir_mode),
        ] {
            if mode > 0o777 || mode & 0o002 != 0 {
                return Err(OpenError::Config(format!(
                    "{name} must be a permission mode in 0o000..=0o777 without the world-write \
                     bit, got {mode:#o}"
                )));
            }
        }
        let dir = config.directory.clone();
        let log_dir = Arc::new(
            LogDir::open(&dir, config.dir_mode, config.file_mode).map_err(|e| match e {
                DirError::Refused(why) => OpenError::Refused(why),
                DirError::NotADirectory(why) => OpenError::NotADirectory(why),
                DirError::Io(e) => OpenError::Io(dir.clone(), e),
            })?,
        );
        let dir_lock = lock_directory(&dir)?;
        if lock_identity(&dir_lock) != log_dir.identity().ok() {
            return Err(OpenError::Refused(format!(
                "{}: the directory was replaced while the logger opened it",
                dir.display()
            )));
        }
        let key = config.hmac_key.clone();
        let recovered = recover(&log_dir, key.as_deref())?;
        let segment_records = config.segment_records();
        // stats.bin first: a failed open leaves no fallocated segment behind.
        let stats_file =
            StatsFile::create(&log_dir).map_err(|e| OpenError::Io(dir.join("stats.bin"), e))?;
        let first_mark = recovered.next_seq.saturating_add(SEQ_BLOCK).min(SEQ_LIMIT);
        let first = PreparedSegment::create_in(&log_dir, recovered.next_index, segment_records)
            .and_then(|p| {
                p.activate(
                    recovered.next_seq,
                    first_mark,
                    &recovered.prev_chain,
                    key.as_deref(),
                )
            })
            .map_err(|e| OpenError::Io(dir.clone(), e))?;
        let first_name = format!("{:012}.seg", first.index());
        let undo = |e: io::Error| {
            let _ = log_dir.unlink(&first_name);
            OpenError::Io(dir.clone(), e)
        };
        let direct = config.engine == Engine::Direct;
        // The direct engine has no use for rings: the smallest ones keep the shared code
        // (stats, close, fork) one path without holding megabytes of pre-faulted slots.
        let rings = if direct {
            [Ring::new(64), Ring::new(64)]
        } else {
            [
                Ring::new(config.main_capacity),
                Ring::new(config.emergency_capacity),
            ]
        };
        let consumers = [
            rings[0].consumer().expect("fresh ring"),
            rings[1].consumer().expect("fresh ring"),
        ];
        let shared = Arc::new(Shared {
            syncer: Syncer::new(),
            seq: CachePadded::new(AtomicU64::new(recovered.next_seq)),
            seq_reserved: CachePadded::new(AtomicU64::new(first_mark)),
            chain_nudge: OnceLock::new(),
            chain_waker: OnceLock::new(),
            rings,
            drops: [DropTracker::new(), DropTracker::new()],
            closed: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            flush_requested: AtomicBool::new(false),
            sync_requested: AtomicBool::new(false),
            counters: Counters::default(),
            config,
            flusher_waker: CachePadded::new(Waker::new()),
        });
        shared.counters.segments.store(1, Ordering::Relaxed);
        let mut chainer = if direct {
            Chaining::Inline {
                key: key.clone(),
                current: None,
            }
        } else {
            Chaining::Thread(Chainer::spawn(key.clone(), Arc::clone(&shared)).map_err(undo)?)
        };
        chainer.open(&first, &recovered.prev_chain, &shared);
        let mut flusher = Flusher {
            shared: Arc::clone(&shared),
            consumers,
            sink: Sink {
                next_index: first.index() + 1,
                current: Some(first),
                next: None,
                preparing: None,
                retry_at: None,
                backoff: Duration::ZERO,
                segment_records,
                chainer,
                key,
                last_chain: recovered.prev_chain,
                dir: Arc::clone(&log_dir),
                session_first: recovered.next_index,
                reserve_used: [false; 3],
                inline: direct,
                unsynced: Vec::new(),
            },
            calibration: Calibration::new(),
            stats_file,
            reported_drops: [0, 0],
            gap_range: [(u64::MAX, 0); 2],
            pending_system: Vec::with_capacity(8),
            last_clock_check: None,
        };
        flusher.sink.prepare_next(&shared);
        flusher.push_system(
            kind::SESSION_START,
            0,
            std::process::id() as i64,
            recovered.next_seq as i64,
            1,
        );
        if direct {
            let mut d = Direct {
                flusher,
                next_tick: Instant::now(),
                last_publish: None,
            };
            d.tick();
            d.flusher.write_pending_system();
            d.flusher.commit(false);
            return Ok(Logger {
                shared,
                flusher: Mutex::new(None),
                recovery_notes: recovered.notes,
                owner_pid: std::process::id(),
                abandoned: AtomicBool::new(false),
                dir_lock: Mutex::new(Some(dir_lock)),
                direct: Some(Mutex::new(Some(d))),
            });
        }
        let syncer_shared = Arc::clone(&shared);
        let syncer = std::thread::Builder::new()
            .name("ksa-syncer".into())
            .spawn(move || syncer_shared.syncer.run(&syncer_shared.counters))
            .map_err(undo)?;
        let handle = std::thread::Builder::new()
            .name("ksa-flusher".into())
            .spawn(move || {
                flusher.run();
                let _ = syncer.join();
            })
            .map_err(undo)?;
        Ok(Logger {
            shared,
            flusher: Mutex::new(Some(handle)),
            recovery_notes: recovered.notes,
            owner_pid: std::process::id(),
            abandoned: AtomicBool::new(false),
            dir_lock: Mutex::new(Some(dir_lock)),
            direct: None,
        })
    }

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

impl Stats {
    /// Same counters, ignoring the flusher's park/wake counts.
    fn same_counts(&self, other: &Stats) -> bool {
        Stats {
            flusher_parks: 0,
            flusher_wakes: 0,
            ..self.clone()
        } == Stats {
            flusher_parks: 0,
            flusher_wakes: 0,
            ..other.clone()
        }
    }
}

impl Shared {
    /// Asks the flusher for a pass now (a flush waits for it) and wakes it if it is parked.
    fn wake_flusher(&self) {
        self.flush_requested.store(true, Ordering::Release);
        self.flusher_waker.wake();
    }

    /// Asks the chainer to hash what is committed now (and wakes it if it is parked).
    fn nudge_chainer(&self) {
        if let Some(tx) = self.chain_nudge.get() {
            let _ = tx.send(ChainMsg::Nudge);
        }
        if let Some(w) = self.chain_waker.get() {
            w.wake();
        }
    }

    fn stats(&self) -> Stats {
        let c = &self.counters;
        if self.config.engine == Engine::Direct {
            // No rings: what the callers wrote, and no ring numbers.
            let written = c.direct_written.load(Ordering::Relaxed);
            return Stats {
                records_written: written,
                main_ring_len: 0,
                main_ring_capacity: 0,
                emergency_ring_len: 0,
                emergency_ring_capacity: 0,
                ..self.ring_stats()
            };
        }
        self.ring_stats()
    }

    fn ring_stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            records_written: self.rings[0].claimed() + self.rings[1].claimed(),
            records_flushed: c.records_flushed.load(Ordering::Relaxed),
            dropped_main: self.drops[0].count.load(Ordering::Relaxed),
            dropped_emergency: self.drops[1].count.load(Ordering::Relaxed),
            main_ring_len: self.rings[0].len() as u64,
            main_ring_capacity: self.rings[0].capacity() as u64,
            emergency_ring_len: self.rings[1].len() as u64,
            emergency_ring_capacity: self.rings[1].capacity() as u64,
            flushes: c.flushes.load(Ordering::Relaxed),
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
            segments: c.segments.load(Ordering::Relaxed),
            sink_errors: c.sink_errors.load(Ordering::Relaxed),
            last_seq: self.seq.load(Ordering::Relaxed).saturating_sub(1),
            durable_syncs: c.durable_syncs.load(Ordering::Relaxed),
            seq_unreserved: c.seq_unreserved.load(Ordering::Relaxed),
            clock_state: c.clock_state.load(Ordering::Relaxed),
            flusher_parks: self.flusher_waker.parks(),
            flusher_wakes: self.flusher_waker.wakes(),
        }
    }
}

/// The current segment, the next one being prepared, and the retry state after disk errors.
struct Sink {
    current: Option<SegmentWriter>,
    next: Option<PreparedSegment>,
    preparing: Option<JoinHandle<io::Result<PreparedSegment>>>,
    retry_at: Option<Instant>,
    backoff: Duration,
    segment_records: u64,
    key: Option<Vec<u8>>,
    /// Index of the segment to prepare next.
    next_index: u64,
    /// Final chain value of the last closed segment (the next one's `prev_chain`).
    last_chain: ChainHead,
    /// Hashes the current segment (on its own thread, or inline).
    chainer: Chaining,
    /// The log directory (new segments are created relative to it).
    dir: Arc<LogDir>,
    /// Index of this session's first segment.
    session_first: u64,
    /// Per current segment: a main-ring GAP, an emergency-ring GAP, a CLOCK record already
    /// took a slot of the reserve. Each takes at most one; later ones wait, merged.
    reserve_used: [bool; 3],
    /// The direct engine's sink: the next segment is created by the caller at the roll (no
    /// preparer thread, no syncer).
    inline: bool,
    /// The direct engine's rolled segments not yet fdatasync'ed: synced by the next durable
    /// flush or close, not by the caller that happened to fill the segment.
    unsynced: Vec<std::fs::File>,
}

/// The hash chain of the current segment: on the chainer thread (rings), or inline, brought
/// up to date by the direct engine's caller at flush, roll and close.
enum Chaining {
    Thread(Chainer),
    Inline {
        key: Option<Vec<u8>>,
        current: Option<segment::ChainWriter>,
    },
}

impl Chaining {
    fn open(&mut self, segment: &SegmentWriter, prev: &ChainHead, shared: &Shared) {
        match self {
            Chaining::Thread(c) => c.open(segment, prev, shared),
            Chaining::Inline { key, current } => {
                *current = segment
                    .sync_handle()
                    .and_then(|f| segment::ChainWriter::from_file(f, prev, key.as_deref()))
                    .map_err(|_| shared.counters.sink_errors.fetch_add(1, Ordering::Relaxed))
                    .ok();
            }
        }
    }

    /// Hashes what is committed and publishes how far the chain reaches.
    fn catch_up(&mut self, shared: &Shared) {
        match self {
            Chaining::Thread(_) => shared.nudge_chainer(),
            Chaining::Inline { current, .. } => {
                if let Some(c) = current.as_mut() {
                    c.catch_up();
                    let (index, done) = c.progress();
                    shared
                        .counters
                        .chained_point
                        .fetch_max(chain_point(index, done), Ordering::AcqRel);
                }
            }
        }
    }

    fn committed(&mut self, records_flushed: u64) {
        if let Chaining::Thread(c) = self {
            c.committed(records_flushed);
        }
    }

    fn seal(&mut self, shared: &Shared) -> ChainHead {
        match self {
            Chaining::Thread(c) => c.seal(shared),
            Chaining::Inline { current, .. } => {
                let head = current.take().and_then(|mut c| {
                    c.catch_up();
                    let (index, done) = c.progress();
                    let head = c.seal().ok();
                    if head.is_some() {
                        shared
                            .counters
                            .chained_point
                            .fetch_max(chain_point(index, done), Ordering::AcqRel);
                    }
                    head
                });
                head.unwrap_or_else(|| {
                    shared.counters.sink_errors.fetch_add(1, Ordering::Relaxed);
                    [0; 32]
                })
            }
        }
    }

    fn stop(&mut self) {
        if let Chaining::Thread(c) = self {
            c.stop();
        }
    }
}

enum ChainMsg {
    /// A handle on the new current segment (never reopened by path) and its `prev_chain`.
    Open(std::fs::File, ChainHead),
    /// Catch up now (a chained flush is waiting).
    Nudge,
    Seal(std::sync::mpsc::SyncSender<Option<ChainHead>>),
    Stop,
}

/// The hash-chain thread: it follows the current segment's `committed` count from its own
/// file ([`segment::ChainWriter`], `pread`), so SHA-256 (~36 ns a record) is off the flusher.
/// While records flow it hashes about every millisecond; when it has caught up it parks until
/// the flusher commits more ([`Chainer::committed`]) or sends a message (no periodic wakeup
/// but a 1 s safety net). At a roll the flusher waits for it to seal the old segment: the next
/// segment's `prev_chain` must be final before the next segment is written.
struct Chainer {
    tx: std::sync::mpsc::Sender<ChainMsg>,
    thread: Option<JoinHandle<()>>,
    waker: Arc<Waker>,
    /// `records_flushed` at the last wake, so a pass that committed nothing new wakes nobody.
    notified: u64,
}

/// While records flow, the chainer hashes in batches of about this period.
const CHAIN_BATCH: Duration = Duration::from_millis(1);
/// The chainer's longest park (a safety net: the flusher wakes it after every commit).
const CHAIN_MAX_PARK: Duration = Duration::from_secs(1);

impl Chainer {
    fn spawn(key: Option<Vec<u8>>, shared: Arc<Shared>) -> io::Result<Chainer> {
        use std::sync::mpsc::TryRecvError;
        let (tx, rx) = std::sync::mpsc::channel::<ChainMsg>();
        let _ = shared.chain_nudge.set(tx.clone());
        let waker = Arc::new(Waker::new());
        let _ = shared.chain_waker.set(Arc::clone(&waker));
        let thread_waker = Arc::clone(&waker);
        let thread = std::thread::Builder::new()
            .name("ksa-chainer".into())
            .spawn(move || {
                yield_to_callers();
                thread_waker.register_current();
                let mut current: Option<segment::ChainWriter> = None;
                loop {
                    loop {
                        match rx.try_recv() {
                            Ok(ChainMsg::Open(file, prev)) => {
                                current =
                                    segment::ChainWriter::from_file(file, &prev, key.as_deref())
                                        .map_err(|_| {
                                            shared
                                                .counters
                                                .sink_errors
                                                .fetch_add(1, Ordering::Relaxed)
                                        })
                                        .ok();
                            }
                            Ok(ChainMsg::Seal(reply)) => {
                                let head = current.take().and_then(|mut c| {
                                    c.catch_up();
                                    let (index, done) = c.progress();
                                    let head = c.seal().ok();
                                    if head.is_some() {
                                        shared
                                            .counters
                                            .chained_point
                                            .fetch_max(chain_point(index, done), Ordering::AcqRel);
                                    }
                                    head
                                });
                                let _ = reply.send(head);
                            }
                            Ok(ChainMsg::Nudge) => {}
                            Ok(ChainMsg::Stop) | Err(TryRecvError::Disconnected) => return,
                            Err(TryRecvError::Empty) => break,
                        }
                    }
                    let hashed = current.as_mut().map_or(0, |c| {
                        let n = c.catch_up();
                        let (index, done) = c.progress();
                        shared
                            .counters
                            .chained_point
                            .fetch_max(chain_point(index, done), Ordering::AcqRel);
                        n
                    });
                    if hashed > 0 {
                        // Records flow: batch them (a message still cuts this short).
                        std::thread::park_timeout(CHAIN_BATCH);
                    } else {
                        // Caught up: park until a commit; the re-check hashes a commit that
                        // raced with the park announcement (see crate::idle). What it hashes
                        // is published as `chained_point` at the top of the next pass.
                        thread_waker.park(CHAIN_MAX_PARK, || {
                            current.as_mut().is_some_and(|c| c.catch_up() > 0)
                        });
                    }
                }
            })?;
        Ok(Chainer {
            tx,
            thread: Some(thread),
            waker,
            notified: 0,
        })
    }

    fn send(&self, msg: ChainMsg) -> bool {
        let sent = self.tx.send(msg).is_ok();
        self.waker.wake();
        sent
    }

    /// After a commit: wakes the chainer if it is parked and `records_flushed` moved.
    fn committed(&mut self, records_flushed: u64) {
        if records_flushed != self.notified {
            self.notified = records_flushed;
            self.waker.wake_if_parked();
        }
    }

    fn open(&self, segment: &SegmentWriter, prev: &ChainHead, shared: &Shared) {
        match segment.sync_handle() {
            Ok(file) => {
                self.send(ChainMsg::Open(file, *prev));
            }
            Err(_) => {
                shared.counters.sink_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The final chain of the segment being closed (zeros, counted as a sink error, if the
    /// chainer is gone or could not read the segment: verify then reports the broken link).
    fn seal(&self, shared: &Shared) -> ChainHead {
        let (reply_tx, reply_rx) = std::sync::mpsc::sync_channel(1);
        if self.send(ChainMsg::Seal(reply_tx)) {
            if let Ok(Some(head)) = reply_rx.recv_timeout(Duration::from_secs(10)) {
                return head;
            }
        }
        shared.counters.sink_errors.fetch_add(1, Ordering::Relaxed);
        [0; 32]
    }

    fn stop(&mut self) {
        self.send(ChainMsg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Sink {
    /// Slots at the end of each segment that only emergency and system records may use, so a
    /// full disk (no next segment) still leaves room for kill-switch records.
    fn reserve(&self) -> u64 {
        (self.segment_records / 16).min(1024)
    }

    /// True once the current segment has no room left outside the reserve (or none at all).
    fn in_reserve(&self) -> bool {
        self.current
            .as_ref()
            .is_none_or(|c| c.remaining() <= self.reserve())
    }

    /// Starts reserving the next segment once the current one is half full: early enough
    /// that a roll never waits (fallocate takes milliseconds, half a segment is ~50 ms at
    /// full rate), late enough that an idle logger holds one segment of disk, not two.
    fn prepare_next(&mut self, shared: &Shared) {
        if self.inline {
            return; // the direct engine creates its next segment at the roll
        }
        if self.next.is_some()
            || self.preparing.is_some()
            || self.retry_at.is_some_and(|t| Instant::now() < t)
            || self
                .current
                .as_ref()
                .is_some_and(|c| c.remaining() > c.capacity() / 2)
        {
            return;
        }
        let dir = Arc::clone(&self.dir);
        let (index, records) = (self.next_index, self.segment_records);
        match std::thread::Builder::new()
            .name("ksa-prepare".into())
            .spawn(move || {
                yield_to_callers();
                PreparedSegment::create_in(&dir, index, records)
            }) {
            Ok(h) => self.preparing = Some(h),
            Err(_) => self.failed(shared),
        }
    }

    fn failed(&mut self, shared: &Shared) {
        shared.counters.sink_errors.fetch_add(1, Ordering::Relaxed);
        self.backoff =
            (self.backoff * 2).clamp(Duration::from_millis(1), Duration::from_millis(200));
        self.retry_at = Some(Instant::now() + self.backoff);
    }

    /// The direct engine's next segment, created by the caller that needs it (fallocate: a
    /// few ms, once a segment); after a failure, not again before the backoff has passed.
    fn prepare_inline(&mut self, shared: &Shared) {
        if self.next.is_some() || self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        match PreparedSegment::create_in(&self.dir, self.next_index, self.segment_records) {
            Ok(p) => {
                self.next = Some(p);
                self.backoff = Duration::ZERO;
                self.retry_at = None;
            }
            Err(_) => self.failed(shared),
        }
    }

    /// Collects a finished preparation.
    fn poll_prepared(&mut self, shared: &Shared) {
        if self.preparing.as_ref().is_some_and(|h| h.is_finished()) {
            match self.preparing.take().map(|h| h.join()) {
                Some(Ok(Ok(p))) => {
                    self.next = Some(p);
                    self.backoff = Duration::ZERO;
                    self.retry_at = None;
                }
                _ => self.failed(shared),
            }
        }
        self.prepare_next(shared);
    }

    /// Room for records of `ring` (system records count as emergency), rolling over to the
    /// prepared segment when the current one is full. Main-ring records never take the last
    /// `reserve()` slots, so a full disk (no next segment) still has room for kill switches.
    /// Once the logger is stopping no kill switch can arrive any more, so main-ring records
    /// may use the reserve too, all but the last [`SHUTDOWN_SLOTS`] (kept for the GAP and
    /// SESSION_END records that declare what could not be written).
    fn room(&mut self, shared: &Shared, emergency: bool, seq_hint: u64) -> u64 {
        for _ in 0..2 {
            let remaining = self.current.as_ref().map(|c| c.remaining()).unwrap_or(0);
            let usable = if emergency {
                remaining
            } else if shared.stop.load(Ordering::Acquire) {
                remaining.saturating_sub(SHUTDOWN_SLOTS)
            } else {
                remaining.saturating_sub(self.reserve())
            };
            if usable > 0 {
                // Bounded by the writer's staging buffer (0 while the disk refuses a write).
                let accepts = self.current.as_mut().map(|c| c.accepts()).unwrap_or(0);
                return usable.min(accepts);
            }
            if self.inline {
                self.prepare_inline(shared);
                if self.next.is_none() {
                    return 0;
                }
            } else if self.next.is_none() {
                self.poll_prepared(shared);
                return 0;
            }
            self.roll(shared, seq_hint);
        }
        0
    }

    fn roll(&mut self, shared: &Shared, seq_hint: u64) {
        let Some(next) = self.next.take() else { return };
        if let Some(current) = self.current.take() {
            let file = current.sync_handle();
            if current.finish().is_err() {
                shared.counters.sink_errors.fetch_add(1, Ordering::Relaxed);
            }
            // Waits for the chainer to hash what it has not yet (it runs ~1 ms behind).
            self.last_chain = self.chainer.seal(shared);
            match file {
                Ok(file) if self.inline => self.unsynced.push(file),
                Ok(file) => shared.syncer.post(file, None),
                Err(_) => {
                    shared.counters.sink_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let mark = shared.seq_reserved.load(Ordering::Acquire);
        match next.activate(seq_hint, mark, &self.last_chain, self.key.as_deref()) {
            Ok(w) => {
                self.chainer.open(&w, &self.last_chain, shared);
                self.reserve_used = [false; 3];
                self.current = Some(w);
                self.next_index += 1;
                shared.counters.segments.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => self.failed(shared),
        }
        self.prepare_next(shared);
    }
}

/// Seq of a queued system record that has none yet.
const UNASSIGNED: u64 = u64::MAX;

/// How far ahead of the counter the flusher puts the `seq_reserved` mark (it raises it when
/// less than half of this is left). The hot path never makes a syscall, so the mark must stay
/// ahead of it for as long as the flusher can be late. The counter is one shared `fetch_add`:
/// even on many cores it advances at most ~100 million a second (a contended atomic costs
/// ≥ 10 ns; one thread's append is ~20 ns in Rust, ~100 ns from Python). Half a block, 2**27,
/// is then more than 1.3 s of the fastest possible appends and ~13 s of one Python thread at
/// full rate, while the flusher looks every `emergency_poll` (50 µs). If it is late anyway
/// (a hung disk), appends at or above the mark are refused, counted in `seq_unreserved`
/// and declared by a GAP record: no seq is handed out that a crash could repeat. The price
/// is seq space: a crashed session skips at most 2**28 seqs (of 2**62, see [`SEQ_LIMIT`]).
const SEQ_BLOCK: u64 = 1 << 28;

/// No real counter reaches this (2**62: ~1,400 years at 100 million a second); a seq or mark
/// at or above it in a file is damage, never a start for the counter, which thus never wraps.
pub const SEQ_LIMIT: u64 = 1 << 62;

/// Main-ring records moved per step before the flusher looks at the emergency ring again.
const MAIN_CHUNK: usize = 4096;

/// Idle passes the flusher spins, then yields, before it parks (crate::idle): a few µs in which
/// a following record costs no wakeup.
const FLUSHER_SPINS: u32 = 20;
const FLUSHER_YIELDS: u32 = 4;
/// The flusher's longest park: how long a main-ring record written after a quiet period may
/// wait for the file (a kill-switch record, a flush or a quarter-full main ring wake it at once;
/// while records flow the park is capped at the flush interval). A wakeup costs ~50-70 µs of
/// CPU on the 2-vCPU VM (timer, context switch, one pass): 100 a second were 0.6 % of a core,
/// 20 a second keep an idle process well under 1 % (BENCHMARKS.md, idle).
const FLUSHER_MAX_PARK: Duration = Duration::from_millis(50);

/// Slots of the current segment main-ring records leave free at shutdown, for the records that
/// close the session: a GAP per ring and SESSION_END (and a CLOCK record that may be pending).
const SHUTDOWN_SLOTS: u64 = 4;

struct Flusher {
    shared: Arc<Shared>,
    consumers: [Consumer; 2],
    sink: Sink,
    calibration: Calibration,
    stats_file: StatsFile,
    reported_drops: [u64; 2],
    /// Range of the latest GAP per ring, reused when a count arrives without its range.
    gap_range: [(u64, u64); 2],
    /// System records not yet written (no room), oldest first.
    pending_system: Vec<Record>,
    last_clock_check: Option<Instant>,
}

impl Flusher {
    /// Queues a system record. Its seq is taken when it is written (so merging two never loses
    /// one). GAP records of one ring merge while waiting (the range grows, the counts add up)
    /// and a newer CLOCK record replaces a waiting one: on a full disk they cannot flood the
    /// reserve that kill-switch records need (issue 11, row 10).
    fn push_system(&mut self, kind: u8, code: u16, a: i64, b: i64, c: u64) {
        let (mono_ns, wall_ns) = self.calibration.to_ns(clock::ticks());
        if kind == kind::GAP || kind == kind::CLOCK {
            if let Some(p) = self
                .pending_system
                .iter_mut()
                .find(|r| r.kind == kind && (kind == kind::CLOCK || r.code == code))
            {
                if kind == kind::GAP {
                    p.a = p.a.min(a);
                    p.b += b;
                    p.c = p.c.max(c);
                } else {
                    (p.code, p.a, p.b, p.c) = (code, a, b, c);
                }
                (p.mono_ns, p.wall_ns) = (mono_ns, wall_ns);
                return;
            }
        }
        self.pending_system.push(Record {
            seq: UNASSIGNED,
            wall_ns,
            mono_ns,
            kind,
            flags: FLAG_SYSTEM,
            code,
            thread_id: 0,
            a,
            b,
            c,
            symbol_id: 0,
            crc32c: 0,
        });
    }

    /// Keeps the `seq_reserved` mark on file at least half a block ahead of the counter
    /// (pwrite into the current header; the in-memory mark follows only once it is there).
    fn raise_mark(&mut self) {
        let s = &*self.shared;
        let next = s.seq.load(Ordering::Relaxed);
        let mark = s.seq_reserved.load(Ordering::Relaxed);
        if next.saturating_add(SEQ_BLOCK / 2) <= mark {
            return;
        }
        let new = next.saturating_add(SEQ_BLOCK).min(SEQ_LIMIT);
        if new <= mark {
            return;
        }
        let Some(seg) = self.sink.current.as_ref() else {
            return;
        };
        match seg.write_seq_reserved(new) {
            Ok(()) => s.seq_reserved.store(new, Ordering::Release),
            Err(_) => {
                s.counters.sink_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A seq for a system record, below the mark on file.
    fn system_seq(&mut self) -> u64 {
        let seq = self.shared.seq.fetch_add(1, Ordering::Relaxed);
        if seq >= self.shared.seq_reserved.load(Ordering::Relaxed) {
            self.raise_mark();
        }
        seq
    }

    fn run(mut self) {
        set_timer_slack_ns(1_000);
        yield_to_callers();
        let cfg = self.shared.config.clone();
        let shared = Arc::clone(&self.shared);
        let waker = &*shared.flusher_waker;
        waker.register_current();
        let mut backoff = Backoff::new(
            FLUSHER_SPINS,
            FLUSHER_YIELDS,
            cfg.emergency_poll,
            FLUSHER_MAX_PARK,
        );
        let mut next_main = Instant::now();
        let mut last_writeback = Instant::now();
        let mut last_publish = (Instant::now(), Stats::default());
        loop {
            let stopping = self.shared.stop.load(Ordering::Acquire);
            if self.shared.paused.load(Ordering::Acquire) && !stopping {
                match cfg.idle_strategy {
                    IdleStrategy::BusyPoll => std::thread::sleep(cfg.emergency_poll),
                    // set_paused(false) and close() wake it.
                    IdleStrategy::Backoff => {
                        waker.park(FLUSHER_MAX_PARK, || {
                            !shared.paused.load(Ordering::Acquire)
                                || shared.stop.load(Ordering::Acquire)
                        });
                    }
                }
                continue;
            }
            let now = Instant::now();
            self.calibration.maybe_reanchor(clock::monotonic_ns());
            self.sink.poll_prepared(&self.shared);
            self.check_clock(now, cfg.clock_check_interval);
            self.raise_mark();
            self.note_gaps();
            let mut wrote_emergency = self.write_pending_system();
            if self.drain(RingId::Emergency, usize::MAX) > 0 {
                // In the file before the main ring is drained (`flush_emergency` waits on it).
                self.commit(false);
                wrote_emergency = true;
            }
            let mut worked = wrote_emergency;
            let main_ring = &self.shared.rings[0];
            let flush_requested = self.shared.flush_requested.swap(false, Ordering::AcqRel);
            if stopping
                || flush_requested
                || now >= next_main
                || main_ring.len() * 4 >= main_ring.capacity()
            {
                // In chunks, so a kill-switch record arriving meanwhile waits for one chunk
                // (tens of µs), not for the whole main ring.
                loop {
                    let n = self.drain(RingId::Main, MAIN_CHUNK);
                    worked |= n > 0;
                    if n < MAIN_CHUNK {
                        break;
                    }
                    if !self.shared.rings[1].is_empty() {
                        self.drain(RingId::Emergency, usize::MAX);
                        self.commit(cfg.durable_kill_switch);
                    }
                }
                next_main = now + cfg.flush_interval;
            }
            let sync_requested = self.shared.sync_requested.swap(false, Ordering::AcqRel);
            self.commit(wrote_emergency && cfg.durable_kill_switch || sync_requested || stopping);
            if now.duration_since(last_writeback) >= cfg.flush_interval {
                if let Some(seg) = self.sink.current.as_mut() {
                    seg.start_writeback();
                }
                // An idle logger rewrites stats.bin once a second (its `updated` time), not at
                // every wakeup: a syscall less per wakeup.
                let stats = self.shared.stats();
                if !stats.same_counts(&last_publish.1)
                    || now.duration_since(last_publish.0) >= Duration::from_secs(1)
                {
                    self.stats_file.publish(&stats);
                    last_publish = (now, stats);
                }
                last_writeback = now;
            }
            if stopping
                && self.shared.rings.iter().all(|r| r.is_empty())
                && self.pending_system.is_empty()
            {
                self.finish();
                return;
            }
            if stopping
                && self
                    .sink
                    .current
                    .as_ref()
                    .is_none_or(|c| c.remaining() <= SHUTDOWN_SLOTS)
                && self.sink.next.is_none()
                && self.sink.preparing.is_none()
            {
                // Disk full at shutdown: the main ring cannot be drained any further (before,
                // this waited for `remaining() == 0`, which main-ring records never reach: close()
                // never returned). finish() counts what is left as dropped and GAP-records it.
                self.finish();
                return;
            }
            match cfg.idle_strategy {
                IdleStrategy::BusyPoll => std::thread::sleep(cfg.emergency_poll),
                IdleStrategy::Backoff if worked => backoff.reset(),
                IdleStrategy::Backoff => {
                    // close() and set_paused() wake unconditionally: no need to re-check them.
                    let cap = self.park_cap(next_main, cfg.clock_check_interval);
                    backoff.idle(waker, cap, || {
                        !shared.rings[1].is_empty()
                            || shared.flush_requested.load(Ordering::Acquire)
                            || shared.sync_requested.load(Ordering::Acquire)
                            || shared.rings[0].len() * 4 >= shared.rings[0].capacity()
                    });
                }
            }
        }
    }

    /// The longest the flusher may park: until the main ring's next drain when something
    /// waits (main-ring or unwritten records), else until the next CLOCK check, at most
    /// [`FLUSHER_MAX_PARK`]. Producers of urgent work wake it sooner.
    fn park_cap(&self, next_main: Instant, clock_interval: Duration) -> Duration {
        let now = Instant::now();
        let waiting =
            self.shared.rings.iter().any(|r| !r.is_empty()) || !self.pending_system.is_empty();
        let until = if waiting {
            next_main
        } else {
            self.last_clock_check.map_or(now, |t| t + clock_interval)
        };
        until
            .saturating_duration_since(now)
            .clamp(Duration::from_micros(1), FLUSHER_MAX_PARK)
    }

    /// Turns drop counts into GAP records.
    ///
    /// The range and the count are three atomics: a drop noted while they are taken could land
    /// its range in this GAP and its count in the next one (whose range then misses it). So the
    /// snapshot is kept only if no note was in progress and the count did not move; otherwise
    /// the range is put back and the GAP waits for the next pass. Returns false when a ring
    /// was deferred that way.
    fn note_gaps(&mut self) -> bool {
        let mut clean = true;
        for ring in [RingId::Emergency, RingId::Main] {
            let i = ring as usize;
            let tracker = &self.shared.drops[i];
            let count = tracker.count.load(Ordering::SeqCst);
            let new = count - self.reported_drops[i];
            if new == 0 {
                continue;
            }
            let first = tracker.first.swap(u64::MAX, Ordering::SeqCst);
            let last = tracker.last.swap(0, Ordering::SeqCst);
            if tracker.busy.load(Ordering::SeqCst) != 0
                || tracker.count.load(Ordering::SeqCst) != count
            {
                tracker.first.fetch_min(first, Ordering::SeqCst);
                tracker.last.fetch_max(last, Ordering::SeqCst);
                clean = false;
                continue;
            }
            if first != u64::MAX {
                self.gap_range[i] = (first, last);
            }
            let (first, last) = self.gap_range[i];
            self.reported_drops[i] = count;
            self.push_system(kind::GAP, i as u16, first as i64, new as i64, last);
        }
        clean
    }

    fn check_clock(&mut self, now: Instant, interval: Duration) {
        if self
            .last_clock_check
            .is_some_and(|t| now.duration_since(t) < interval)
        {
            return;
        }
        self.last_clock_check = Some(now);
        let c = clock_sync_state();
        self.shared
            .counters
            .clock_state
            .store(c.state as u64, Ordering::Relaxed);
        self.push_system(
            kind::CLOCK,
            c.state,
            c.est_error_us,
            c.max_error_us,
            c.status_bits,
        );
    }

    /// Writes waiting system records. In the reserve of a segment (no room left for the main
    /// ring), a GAP per ring and a CLOCK record take one slot each at most; later ones stay
    /// queued, merged, until the next segment or shutdown.
    fn write_pending_system(&mut self) -> bool {
        let stopping = self.shared.stop.load(Ordering::Acquire);
        let mut written = 0u64;
        let mut i = 0;
        while i < self.pending_system.len() {
            let seq_hint = self.shared.seq.load(Ordering::Relaxed);
            if self.sink.room(&self.shared, true, seq_hint) == 0 {
                break;
            }
            let r = &self.pending_system[i];
            let slot = match (r.kind, r.code) {
                (kind::GAP, 0) => Some(0),
                (kind::GAP, _) => Some(1),
                (kind::CLOCK, _) => Some(2),
                _ => None,
            };
            if let Some(slot) = slot.filter(|_| !stopping && self.sink.in_reserve()) {
                if self.sink.reserve_used[slot] {
                    i += 1;
                    continue;
                }
                self.sink.reserve_used[slot] = true;
            }
            if self.pending_system[i].seq == UNASSIGNED {
                self.pending_system[i].seq = self.system_seq();
            }
            let bytes = self.pending_system[i].to_bytes();
            let Some(seg) = self.sink.current.as_mut() else {
                break;
            };
            if !seg.append(&bytes) {
                break;
            }
            self.pending_system.remove(i);
            written += 1;
        }
        self.shared
            .counters
            .records_flushed
            .fetch_add(written, Ordering::Relaxed);
        written > 0
    }

    /// Moves up to `max` records from one ring into the segment, as many as fit.
    fn drain(&mut self, ring: RingId, max: usize) -> usize {
        let emergency = ring == RingId::Emergency;
        let mut total = 0;
        while total < max {
            if self.shared.rings[ring as usize].is_empty() {
                break;
            }
            let seq_hint = self.shared.seq.load(Ordering::Relaxed);
            let room =
                (self.sink.room(&self.shared, emergency, seq_hint) as usize).min(max - total);
            if room == 0 {
                break;
            }
            let Some(seg) = self.sink.current.as_mut() else {
                break;
            };
            let cal = &self.calibration;
            let n = self.consumers[ring as usize].drain(room, |e| {
                let (mono_ns, wall_ns) = cal.to_ns(e.ticks);
                seg.append(&Record::from_entry(e, mono_ns, wall_ns).to_bytes());
            });
            total += n;
            if n < room {
                break;
            }
        }
        self.shared
            .counters
            .records_flushed
            .fetch_add(total as u64, Ordering::Relaxed);
        total
    }

    /// Publishes what was written; with `sync`, asks the syncer thread to make it durable
    /// (the flusher itself never waits for the disk; the direct engine syncs inline). True
    /// when everything written is committed (and, with `sync` inline, synced).
    fn commit(&mut self, sync: bool) -> bool {
        let Some(seg) = self.sink.current.as_mut() else {
            return false;
        };
        let c = &self.shared.counters;
        if seg.commit().is_err() {
            // Nothing published: the records stay staged and the next pass retries.
            c.sink_errors.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let mut ok = true;
        c.committed_point
            .fetch_max(chain_point(seg.index(), seg.written()), Ordering::AcqRel);
        let consumed = [0, 1].map(|i| self.shared.rings[i].consumed());
        for (pos, value) in c.committed_pos.iter().zip(consumed) {
            pos.store(value, Ordering::Release);
        }
        self.sink
            .chainer
            .committed(c.records_flushed.load(Ordering::Relaxed));
        if sync && self.sink.inline {
            // Rolled segments first: a durable flush covers every record returned before it.
            let rolled = std::mem::take(&mut self.sink.unsynced);
            for f in &rolled {
                ok &= f.sync_data().is_ok();
            }
            ok &= seg.sync_data().is_ok();
            let counter = if ok { &c.durable_syncs } else { &c.sink_errors };
            counter.fetch_add(1, Ordering::Relaxed);
        } else if sync {
            match seg.sync_handle() {
                Ok(file) => self.shared.syncer.post(file, Some(consumed)),
                Err(_) => {
                    c.sink_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        c.flushes.fetch_add(1, Ordering::Relaxed);
        c.bytes_written.store(
            c.records_flushed.load(Ordering::Relaxed) * RECORD_SIZE as u64,
            Ordering::Relaxed,
        );
        ok
    }

    /// The direct engine's write of one caller's record: room (rolling inline when the
    /// segment is full), encode, stage. False when there is no room for it.
    fn write_one(&mut self, ring: RingId, e: &Entry) -> bool {
        let emergency = ring == RingId::Emergency;
        if self.sink.room(&self.shared, emergency, e.seq) == 0 {
            return false;
        }
        let Some(seg) = self.sink.current.as_mut() else {
            return false;
        };
        let (mono_ns, wall_ns) = self.calibration.to_ns(e.ticks);
        if !seg.append(&Record::from_entry(e, mono_ns, wall_ns).to_bytes()) {
            return false;
        }
        self.shared
            .counters
            .records_flushed
            .fetch_add(1, Ordering::Relaxed);
        true
    }

    /// A clean close hands out no seq any more: the marks of this session's segments come down
    /// to the counter, so the next session continues right after the last record instead of
    /// a block later (which `verify` would report as a possible loss). A crash during this
    /// leaves some marks high: recovery takes the highest, the safe direction.
    fn lower_mark_at_close(&mut self) {
        let end = self.shared.seq.load(Ordering::SeqCst);
        for index in self.sink.session_first..self.sink.next_index {
            if let Ok(f) = self.sink.dir.open_rw(&format!("{index:012}.seg")) {
                use std::os::unix::fs::FileExt;
                let _ = f.write_all_at(&end.to_le_bytes(), off::SEQ_RESERVED as u64);
            }
        }
        self.shared.seq_reserved.store(end, Ordering::SeqCst);
    }

    fn finish(&mut self) {
        // Records still in the rings can no longer be written (disk full at shutdown): count
        // them as dropped, so that the GAP records below (and the counters) declare them.
        for i in [RingId::Emergency as usize, RingId::Main as usize] {
            let tracker = &self.shared.drops[i];
            let capacity = self.shared.rings[i].capacity();
            self.consumers[i].drain(capacity, |e| tracker.note(e.seq));
        }
        let s = self.shared.stats();
        // Closed: no new notes start; wait out one still in progress (bounded).
        for _ in 0..100_000 {
            if self.note_gaps() {
                break;
            }
            std::thread::yield_now();
        }
        self.push_system(
            kind::SESSION_END,
            0,
            s.records_written as i64,
            s.dropped_main as i64,
            s.dropped_emergency,
        );
        self.write_pending_system();
        self.commit(false);
        if let Some(seg) = self.sink.current.take() {
            let consumed = [0, 1].map(|i| self.shared.rings[i].consumed());
            let file = seg.sync_handle();
            let records = seg.written();
            if seg.finish().is_err() {
                self.shared
                    .counters
                    .sink_errors
                    .fetch_add(1, Ordering::Relaxed);
            }
            self.sink.last_chain = self.sink.chainer.seal(&self.shared);
            // Sealed: the unused tail goes back to the filesystem (best effort).
            if let Ok(f) = &file {
                let _ = segment::release_unused_tail(f, records);
            }
            match file.and_then(|f| f.sync_data()) {
                Ok(()) => {
                    for (pos, value) in self.shared.counters.durable_pos.iter().zip(consumed) {
                        pos.store(value, Ordering::Release);
                    }
                }
                Err(_) => {
                    self.shared
                        .counters
                        .sink_errors
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        for f in std::mem::take(&mut self.sink.unsynced) {
            if f.sync_data().is_err() {
                self.shared
                    .counters
                    .sink_errors
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        self.lower_mark_at_close();
        self.sink.chainer.stop();
        self.shared.syncer.stop();
        if let Some(h) = self.sink.preparing.take() {
            if let Ok(Ok(p)) = h.join() {
                self.sink.next = Some(p);
            }
        }
        if let Some(next) = self.sink.next.take() {
            next.discard();
        }
        self.stats_file.publish(&self.shared.stats());
    }
}

impl Direct {
    /// The periodic work of a flusher pass, at most every `flush_interval`, by whichever
    /// caller comes first: clock re-anchoring, the CLOCK record, GAP records for drops, the
    /// `seq_reserved` mark and the chain; `stats.bin` once a second. No `sync_file_range` writeback
    /// here: it can block on a busy device queue, and here the caller would wait (measured:
    /// ~1 call in 1,000 over 1 ms under load with it); the kernel's own writeback of a few
    /// MB/s of records suffices.
    fn tick(&mut self) {
        let now = Instant::now();
        if now < self.next_tick {
            return;
        }
        let cfg = &self.flusher.shared.config;
        let (interval, clock_interval) = (cfg.flush_interval, cfg.clock_check_interval);
        self.next_tick = now + interval;
        let f = &mut self.flusher;
        f.calibration.maybe_reanchor(clock::monotonic_ns());
        f.check_clock(now, clock_interval);
        f.raise_mark();
        f.note_gaps();
        // Hash what was committed since the last tick (~2 ms of records), so the chain head
        // on file stays close behind and a roll or close has little left to hash (measured
        // before: a roll hashing a whole 64 MiB segment and syncing it took 234 ms of one call).
        f.sink.chainer.catch_up(&f.shared);
        if self
            .last_publish
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            f.stats_file.publish(&f.shared.stats());
            self.last_publish = Some(now);
        }
    }
}

/// The engine's threads (flusher, chainer, syncer, preparer) never preempt the caller's
/// thread on wakeup: SCHED_BATCH disables wakeup preemption, so a thread waking up takes an
/// idle core (the usual case: the flusher still made the 200 µs persist goal, BENCHMARKS.md)
/// or waits for the next tick instead of interrupting the trading thread mid-call.
fn yield_to_callers() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for SCHED_BATCH.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
}

/// SCHED_IDLE: the thread runs only on a CPU nothing else wants, and never takes a time slice
/// from the caller's thread at a tick either (SCHED_BATCH still does). For threads with no
/// latency target of their own (the syncer).
fn run_only_when_idle() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for SCHED_IDLE.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
}

fn set_timer_slack_ns(ns: u64) {
    // SAFETY: prctl(PR_SET_TIMERSLACK) takes plain integers and affects only this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0) };
}

/// The kernel's view of clock synchronisation (adjtimex, read-only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSync {
    /// 0 synchronised, 1 unsynchronised, 2 unknown (adjtimex failed).
    pub state: u16,
    /// Estimated error, µs (-1 when unknown).
    pub est_error_us: i64,
    /// Maximum error, µs (-1 when unknown).
    pub max_error_us: i64,
    /// Kernel status bits | clock state << 32.
    pub status_bits: u64,
}

/// Reads adjtimex without changing anything.
pub fn clock_sync_state() -> ClockSync {
    // SAFETY: timex is plain old data; zeroed is a valid value (modes = 0: read only).
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: tx is a valid, writable timex; with modes 0 adjtimex only reads the clock state.
    let rc = unsafe { libc::adjtimex(&mut tx) };
    if rc < 0 {
        return ClockSync {
            state: 2,
            est_error_us: -1,
            max_error_us: -1,
            status_bits: 0,
        };
    }
    let unsynced = rc == libc::TIME_ERROR || tx.status & libc::STA_UNSYNC != 0;
    ClockSync {
        state: if unsynced { 1 } else { 0 },
        est_error_us: tx.esterror as i64,
        max_error_us: tx.maxerror as i64,
        status_bits: (tx.status as u32 as u64) | ((rc as u32 as u64) << 32),
    }
}

/// `stats.bin`: live counters readable by `killswitch-audit stats DIR` from another process.
/// Written with `pwrite`, like the segments: no writable mapping in the caller's process.
struct StatsFile {
    file: Option<std::fs::File>,
}

impl StatsFile {
    const SIZE: usize = 4096;
    const MAGIC: &'static [u8; 8] = b"KSSTATS1";

    /// A new `stats.bin`: whatever had the name (a stale file, a planted symlink) is
    /// unlinked, never followed (`O_EXCL|O_NOFOLLOW`).
    fn create(dir: &LogDir) -> io::Result<StatsFile> {
        use std::os::unix::fs::FileExt;
        let file = dir.replace("stats.bin")?;
        segment::allocate(&file, Self::SIZE as u64)?;
        file.write_all_at(Self::MAGIC, 0)?;
        Ok(StatsFile { file: Some(file) })
    }

    fn publish(&mut self, s: &Stats) {
        use std::os::unix::fs::FileExt;
        let Some(file) = self.file.as_ref() else {
            return;
        };
        let fields = [
            std::process::id() as u64,
            clock::realtime_ns(),
            s.records_written,
            s.records_flushed,
            s.dropped_main,
            s.dropped_emergency,
            s.main_ring_len,
            s.main_ring_capacity,
            s.emergency_ring_len,
            s.emergency_ring_capacity,
            s.flushes,
            s.bytes_written,
            s.segments,
            s.sink_errors,
            s.last_seq,
        ];
        let mut bytes = [0u8; 15 * 8];
        for (chunk, v) in bytes.chunks_exact_mut(8).zip(fields) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        // A failed write only makes the live counters stale; the log itself is unaffected.
        let _ = file.write_all_at(&bytes, 8);
    }
}
