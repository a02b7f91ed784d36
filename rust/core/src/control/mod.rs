//! Host-local control plane: the shared state file, its watcher thread and presence files.
//!
//! This module owns the bytes of `<control>/state` (the latched scopes every joined process
//! maps read-only), the seqlock protocol that keeps readers consistent, the watcher thread that
//! wakes on a change and hands commands to a callback, and the presence file a joined process
//! keeps under `<control>/procs/`. It knows nothing of Python and decides nothing about what a
//! command means: the callback (the binding, then `killswitch_audit.control`) applies it.
//!
//! # The state file (`FILE_SIZE` bytes, little-endian, preallocated)
//!
//! ```text
//! 0      header (128 B), u64 words: magic "KSACTL01" (0), version (8), epoch (16),
//!                        last_command_id (24), updated_ns UTC (32), n_entries (40)
//! 128    MAX_ENTRIES entries of 128 B (only the first n_entries count):
//!          +0 u8 state (1 REDUCING, 2 HALTED), +1 u8 field mask (1 account, 2 strategy,
//!          4 symbol_id, 8 venue), +2 u16 0, +4 u32 symbol_id, +8 u64 scope id,
//!          +16 u64 command id, +24 u64 journal seq, +32 account[32], +64 strategy[40],
//!          +104 venue[24]  (UTF-8, NUL-padded; a field is set only when its mask bit is)
//! 8192   CMD_SLOTS command slots of 1024 B; command id N lives in slot N % CMD_SLOTS:
//!          +0 u64 id, +8 u8 kind (1 halt, 2 reduce-only, 3 reset), +16 u64 written_ns (UTC),
//!          +24 u64 journal seq, then NUL-padded strings: scope[256] at 32, operator[64] at 288,
//!          second operator[64] at 352, origin host[64] at 416, reason[512] at 480
//! ```
//!
//! # Seqlock
//!
//! One writer at a time (the CLI holds the journal's directory lock). The writer maps the file
//! read-write and, word by word with atomics: stores `epoch + 1` (odd), a release fence, the
//! new words, then `epoch + 2` (even) with release ordering. It then `pwrite`s the epoch word
//! (same bytes) so that inotify reports a change: writes through a mapping raise no inotify
//! event. A reader loads the epoch (acquire), retries while odd, loads the words it needs
//! (relaxed), an acquire fence, reloads the epoch and retries when it moved. After
//! `READ_RETRIES` failed attempts, or when the mapping is invalid, it fails closed (HALTED).
//!
//! The file must never be truncated while mapped (SIGBUS in every reader): the writer never
//! truncates, and only the operators' group may write the file (docs/CONTROL.md).
//!
//! # Files
//!
//! `map` (the mapping as atomic words, and the checks a file passes before it is mapped),
//! `table` ([`ControlTable`]: create/open and the seqlock reader and writer), `fields` (the
//! fixed-width fields), `presence` ([`Presence`]), `watcher` ([`Watcher`]), `tests`.
use std::io;
use std::path::{Path, PathBuf};

mod fields;
mod map;
mod presence;
mod table;
#[cfg(test)]
mod tests;
mod watcher;

pub use presence::{Presence, PRESENCE_SIZE};
pub use table::ControlTable;
pub use watcher::{Ack, Event, WatchConfig, Watcher};

/// Size of the state file.
pub const FILE_SIZE: usize = 16384;
/// First 8 bytes of the state file.
pub const MAGIC: [u8; 8] = *b"KSACTL01";
/// Layout version.
pub const VERSION: u32 = 1;
/// How many latched scopes the table holds.
pub const MAX_ENTRIES: usize = 63;
/// How many recent commands the file keeps.
pub const CMD_SLOTS: usize = 8;
/// `state_for` retries this many times before it fails closed.
pub const READ_RETRIES: u32 = 256;
/// Scope id `state_for` returns when it fails closed (no consistent read, invalid mapping).
pub const FAIL_CLOSED_SCOPE: u64 = u64::MAX;

/// No restriction.
pub const ACTIVE: u8 = 0;
/// Only orders that reduce a position pass.
pub const REDUCING: u8 = 1;
/// Nothing passes.
pub const HALTED: u8 = 2;

const HEADER: usize = 128;
const ENTRY: usize = 128;
const CMD_BASE: usize = 8192;
const CMD: usize = 1024;
const OFF_VERSION: usize = 8;
const OFF_N: usize = 40;
const OFF_EPOCH: usize = 16;
const OFF_LAST_CMD: usize = 24;
const OFF_UPDATED: usize = 32;
const WORDS: usize = FILE_SIZE / 8;

const ACCOUNT_LEN: usize = 32;
const STRATEGY_LEN: usize = 40;
const VENUE_LEN: usize = 24;
const E_ACCOUNT: usize = 32;
const E_STRATEGY: usize = 64;
const E_VENUE: usize = 104;

const C_SCOPE: (usize, usize) = (32, 256);
const C_OPERATOR: (usize, usize) = (288, 64);
const C_SECOND: (usize, usize) = (352, 64);
const C_HOST: (usize, usize) = (416, 64);
const C_REASON: (usize, usize) = (480, 512);

/// Errors of the control plane's files.
#[derive(Debug)]
pub enum ControlError {
    /// An I/O error on `path`.
    Io(PathBuf, io::Error),
    /// The file exists but is not a state file we can trust (size, magic, mode, type).
    Invalid(PathBuf, String),
    /// A value does not fit the fixed layout (names the field).
    TooLong(&'static str, usize),
    /// No consistent read within the retry bound.
    Torn,
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            ControlError::Invalid(p, why) => write!(f, "{}: {why}", p.display()),
            ControlError::TooLong(what, max) => {
                write!(
                    f,
                    "{what} does not fit the control table (at most {max} UTF-8 bytes, no NUL)"
                )
            }
            ControlError::Torn => write!(f, "no consistent read of the control table"),
        }
    }
}

impl std::error::Error for ControlError {}

fn io_err(p: &Path) -> impl FnOnce(io::Error) -> ControlError + '_ {
    move |e| ControlError::Io(p.to_path_buf(), e)
}

/// Wall-clock UTC in ns.
pub fn utc_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// One latched scope, as written by the operator's CLI.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// `REDUCING` or `HALTED`.
    pub state: u8,
    /// Scope fields; None matches any order.
    pub account: Option<String>,
    /// Scope field.
    pub strategy: Option<String>,
    /// Scope field.
    pub symbol_id: Option<u32>,
    /// Scope field.
    pub venue: Option<String>,
    /// The scope's id (`killswitch_audit.killswitch.scope_id`).
    pub scope_id: u64,
    /// Id of the command that latched it.
    pub command_id: u64,
    /// Sequence number of that command's record in the control journal.
    pub seq: u64,
}

/// One command as the CLI published it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Command {
    /// Command id, from 1, +1 per command.
    pub id: u64,
    /// 1 halt, 2 reduce-only, 3 reset.
    pub kind: u8,
    /// UTC ns when the CLI wrote it.
    pub written_ns: u64,
    /// Sequence number of the command's record in the control journal.
    pub seq: u64,
    /// `Scope.text`.
    pub scope: String,
    /// Who.
    pub operator: String,
    /// The second operator of a reset ("" if none).
    pub second_operator: String,
    /// Host the command came from.
    pub host: String,
    /// Why (truncated to 511 bytes; the journal has it whole).
    pub reason: String,
}

/// A consistent copy of the whole table (for the watcher and `status`).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Seqlock epoch the copy was read at (even).
    pub epoch: u64,
    /// Id of the newest command (0: none yet).
    pub last_command_id: u64,
    /// UTC ns of the last update.
    pub updated_ns: u64,
    /// Latched scopes.
    pub entries: Vec<Entry>,
    /// The commands still in the file, oldest first.
    pub commands: Vec<Command>,
}
