//! The logger's settings ([`LoggerConfig`], [`OverflowPolicy`], [`Engine`], [`RingId`]),
//! its errors ([`OpenError`], [`AppendError`]) and its counters ([`Stats`]).
use super::*;

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

/// Logger settings (the YAML `audit_system` section; defaults and limits in [`settings`](super::settings)).
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
    /// The defaults of [`settings`](super::settings), writing into `directory`.
    pub fn new(directory: impl Into<PathBuf>) -> LoggerConfig {
        use super::settings as s;
        LoggerConfig {
            directory: directory.into(),
            main_capacity: s::BUFFER_SIZE.default as usize,
            emergency_capacity: s::EMERGENCY_BUFFER_SIZE.default as usize,
            flush_interval: Duration::from_secs_f64(s::FLUSH_INTERVAL_MS.default / 1e3),
            emergency_poll: Duration::from_micros(s::EMERGENCY_POLL_US.default),
            segment_bytes: s::SEGMENT_SIZE_MB.default << 20,
            overflow: OverflowPolicy::Drop,
            durable_kill_switch: s::DURABLE_KILL_SWITCH,
            hmac_key: None,
            clock_check_interval: Duration::from_secs_f64(s::CLOCK_CHECK_INTERVAL_S.default),
            file_mode: s::FILE_MODE,
            dir_mode: s::DIR_MODE,
            idle_strategy: IdleStrategy::Backoff,
            engine: Engine::Rings,
        }
    }

    pub(super) fn segment_records(&self) -> u64 {
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

/// Why [`super::Logger::audit`] did not store an application record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditError {
    /// The kind is not an application kind (1..=63): 0 and 64.. are the logger's own records.
    NotApplicationKind(u8),
    /// The append itself did not store it.
    Append(AppendError),
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

impl Stats {
    /// Same counters, ignoring the flusher's park/wake counts.
    pub(super) fn same_counts(&self, other: &Stats) -> bool {
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
