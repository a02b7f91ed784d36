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
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

// ------------------------------------------------------------------------------------------
// the mapping

/// A shared mapping of a state file, seen as `WORDS` atomic words.
struct Map {
    ptr: *mut AtomicU64,
    writable: bool,
}

// SAFETY: the mapping is only accessed through atomic word loads/stores, and unmapped in Drop
// when no reference to it remains.
unsafe impl Send for Map {}
// SAFETY: as above: every access is an atomic operation on the shared words.
unsafe impl Sync for Map {}

impl Map {
    fn new(file: &File, writable: bool, path: &Path) -> Result<Map, ControlError> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh mapping of FILE_SIZE bytes of an open fd whose size was checked to be
        // FILE_SIZE; the kernel chooses the address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                FILE_SIZE,
                prot,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(ControlError::Io(path.into(), io::Error::last_os_error()));
        }
        Ok(Map {
            ptr: p.cast(),
            writable,
        })
    }

    #[inline(always)]
    fn word(&self, i: usize) -> &AtomicU64 {
        debug_assert!(i < WORDS);
        // SAFETY: i < WORDS (every caller indexes within the fixed layout); the mapping is
        // FILE_SIZE bytes, page aligned, and lives as long as self.
        unsafe { &*self.ptr.add(i) }
    }

    #[inline(always)]
    fn load(&self, byte_off: usize) -> u64 {
        self.word(byte_off / 8).load(Ordering::Relaxed)
    }

    fn load_bytes(&self, off: usize, out: &mut [u8]) {
        for (k, chunk) in out.chunks_mut(8).enumerate() {
            let w = self.load(off + k * 8).to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
    }

    fn store(&self, byte_off: usize, v: u64) {
        debug_assert!(self.writable);
        self.word(byte_off / 8).store(v, Ordering::Relaxed);
    }

    fn store_bytes(&self, off: usize, bytes: &[u8], len: usize) {
        let mut buf = vec![0u8; len];
        buf[..bytes.len()].copy_from_slice(bytes);
        for (k, chunk) in buf.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.store(off + k * 8, u64::from_le_bytes(w));
        }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: ptr/FILE_SIZE is the mapping made in `new`; no reference outlives self.
        unsafe {
            libc::munmap(self.ptr.cast(), FILE_SIZE);
        }
    }
}

fn open_checked(path: &Path, writable: bool) -> Result<File, ControlError> {
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err(path))?;
    let md = file.metadata().map_err(io_err(path))?;
    let bad = |why: String| Err(ControlError::Invalid(path.into(), why));
    if !md.file_type().is_file() {
        return bad("not a regular file".into());
    }
    if md.len() != FILE_SIZE as u64 {
        return bad(format!(
            "size {} (a state file has {FILE_SIZE} bytes)",
            md.len()
        ));
    }
    if md.mode() & 0o002 != 0 {
        return bad(format!(
            "mode {:o} is world-writable: anyone could lift a halt",
            md.mode() & 0o7777
        ));
    }
    Ok(file)
}

/// The state file, mapped. Readers (`open`) map it read-only; the writer (`open_writer`)
/// read-write.
pub struct ControlTable {
    map: Map,
    file: File,
    path: PathBuf,
    dev_ino: (u64, u64),
    /// Cleared by the watcher when the file went away or went bad: `state_for` then fails
    /// closed without touching the mapping's contents.
    valid: AtomicBool,
}

impl ControlTable {
    /// Maps an existing state file read-only after checking type, size, mode and magic.
    pub fn open(path: &Path) -> Result<ControlTable, ControlError> {
        Self::open_mode(path, false)
    }

    /// Maps an existing state file read-write (the operator's CLI).
    pub fn open_writer(path: &Path) -> Result<ControlTable, ControlError> {
        Self::open_mode(path, true)
    }

    fn open_mode(path: &Path, writable: bool) -> Result<ControlTable, ControlError> {
        let file = open_checked(path, writable)?;
        let md = file.metadata().map_err(io_err(path))?;
        let map = Map::new(&file, writable, path)?;
        let t = ControlTable {
            map,
            file,
            path: path.into(),
            dev_ino: (md.dev(), md.ino()),
            valid: AtomicBool::new(true),
        };
        t.check_header()?;
        Ok(t)
    }

    /// Creates a new, empty state file (`O_CREAT|O_EXCL|O_NOFOLLOW`, `mode`), preallocated.
    pub fn create(path: &Path, mode: u32) -> Result<(), ControlError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(io_err(path))?;
        // SAFETY: plain fallocate on our own fd; reserving the blocks now means a write through
        // the mapping can never meet a full disk (SIGBUS).
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, FILE_SIZE as libc::off_t) };
        if rc != 0 {
            let _ = std::fs::remove_file(path);
            return Err(ControlError::Io(
                path.into(),
                io::Error::from_raw_os_error(rc),
            ));
        }
        let mut head = vec![0u8; FILE_SIZE];
        head[..8].copy_from_slice(&MAGIC);
        head[OFF_VERSION..OFF_VERSION + 8].copy_from_slice(&(VERSION as u64).to_le_bytes());
        head[OFF_UPDATED..OFF_UPDATED + 8].copy_from_slice(&utc_ns().to_le_bytes());
        file.write_all_at(&head, 0).map_err(io_err(path))?;
        // mode is applied under the umask by open(2): set it exactly
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(io_err(path))?;
        file.sync_all().map_err(io_err(path))?;
        Ok(())
    }

    fn check_header(&self) -> Result<(), ControlError> {
        let w0 = self.map.load(0).to_le_bytes();
        let ver = self.map.load(OFF_VERSION);
        if w0 != MAGIC || ver != VERSION as u64 {
            return Err(ControlError::Invalid(
                self.path.clone(),
                format!("bad magic/version ({w0:02x?}, {ver})"),
            ));
        }
        Ok(())
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Marks the mapping invalid (or valid again): `state_for` fails closed while invalid.
    pub fn set_valid(&self, valid: bool) {
        self.valid.store(valid, Ordering::Release);
    }

    /// Whether the mapping is believed (see `set_valid`).
    pub fn is_valid(&self) -> bool {
        self.valid.load(Ordering::Acquire)
    }

    /// True when `path` still names the file mapped here, with the right size and magic.
    pub fn still_current(&self) -> bool {
        match std::fs::symlink_metadata(&self.path) {
            Ok(md) => {
                (md.dev(), md.ino()) == self.dev_ino
                    && md.len() == FILE_SIZE as u64
                    && md.mode() & 0o002 == 0
                    && self.check_header().is_ok()
            }
            Err(_) => false,
        }
    }

    /// The state of an order with these attributes: the most restrictive latched scope that
    /// covers it (a scope covers an order when each of its set fields equals the order's; an
    /// order attribute that is None matches no set field), and that scope's id. Lock-free,
    /// allocation-free, syscall-free. Fails closed: `(HALTED, FAIL_CLOSED_SCOPE)` when the
    /// mapping is invalid or no consistent read was had within `READ_RETRIES` attempts.
    #[inline]
    pub fn state_for(
        &self,
        account: Option<&str>,
        strategy: Option<&str>,
        symbol_id: Option<u32>,
        venue: Option<&str>,
    ) -> (u8, u64) {
        if !self.valid.load(Ordering::Acquire) {
            return (HALTED, FAIL_CLOSED_SCOPE);
        }
        // an order field too long for the table can equal no entry's field: None is exact
        let acc = pad::<4>(account);
        let strat = pad::<5>(strategy);
        let ven = pad::<3>(venue);
        let m = &self.map;
        for _ in 0..READ_RETRIES {
            let e1 = m.word(OFF_EPOCH / 8).load(Ordering::Acquire);
            if e1 & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let n = m.load(OFF_N).min(1 << 20) as usize;
            if n > MAX_ENTRIES {
                break; // garbage: fail closed
            }
            let mut best = (ACTIVE, 0u64);
            for i in 0..n {
                let base = HEADER + i * ENTRY;
                let w0 = m.load(base);
                let state = (w0 & 0xff) as u8;
                if state <= best.0 {
                    continue;
                }
                let mask = ((w0 >> 8) & 0xff) as u8;
                let sym = (w0 >> 32) as u32;
                if mask & 4 != 0 && symbol_id != Some(sym) {
                    continue;
                }
                if mask & 1 != 0 && !field_eq(m, base + E_ACCOUNT, &acc) {
                    continue;
                }
                if mask & 2 != 0 && !field_eq(m, base + E_STRATEGY, &strat) {
                    continue;
                }
                if mask & 8 != 0 && !field_eq(m, base + E_VENUE, &ven) {
                    continue;
                }
                best = (state.min(HALTED), m.load(base + 8));
            }
            fence(Ordering::Acquire);
            let e2 = m.word(OFF_EPOCH / 8).load(Ordering::Relaxed);
            if e1 == e2 {
                return best;
            }
        }
        (HALTED, FAIL_CLOSED_SCOPE)
    }

    /// The current epoch (even when stable).
    pub fn epoch(&self) -> u64 {
        self.map.word(OFF_EPOCH / 8).load(Ordering::Acquire)
    }

    /// A consistent copy of the table (allocates; not for the hot path).
    pub fn snapshot(&self) -> Result<Snapshot, ControlError> {
        self.check_header()?;
        let m = &self.map;
        for _ in 0..READ_RETRIES * 4 {
            let e1 = m.word(OFF_EPOCH / 8).load(Ordering::Acquire);
            if e1 & 1 == 1 {
                std::thread::yield_now();
                continue;
            }
            let n = m.load(OFF_N).min(1 << 20) as usize;
            let last = m.load(OFF_LAST_CMD);
            let updated = m.load(OFF_UPDATED);
            let mut entries = Vec::with_capacity(n.min(MAX_ENTRIES));
            for i in 0..n.min(MAX_ENTRIES) {
                entries.push(read_entry(m, HEADER + i * ENTRY));
            }
            let mut commands = Vec::new();
            let first = last.saturating_sub(CMD_SLOTS as u64 - 1).max(1);
            for id in first..=last {
                let c = read_command(m, CMD_BASE + (id as usize % CMD_SLOTS) * CMD);
                commands.push(c);
            }
            fence(Ordering::Acquire);
            if m.word(OFF_EPOCH / 8).load(Ordering::Relaxed) != e1 {
                continue;
            }
            if n > MAX_ENTRIES {
                return Err(ControlError::Invalid(
                    self.path.clone(),
                    format!("n_entries {n}"),
                ));
            }
            // a slot that does not hold the id it should was overwritten: drop it
            commands.retain(|c| c.id != 0 && c.id <= last);
            let mut ok = commands.windows(2).all(|w| w[0].id < w[1].id);
            ok &= commands.last().is_none_or(|c| c.id == last);
            if !ok {
                return Err(ControlError::Invalid(
                    self.path.clone(),
                    "command ring out of order".into(),
                ));
            }
            return Ok(Snapshot {
                epoch: e1,
                last_command_id: last,
                updated_ns: updated,
                entries,
                commands,
            });
        }
        Err(ControlError::Torn)
    }

    /// Writes a new table (and, if given, a command with id `last_command_id + 1`) under the
    /// seqlock, then rings inotify. Caller must hold the writers' lock (the journal's).
    pub fn publish(
        &self,
        entries: &[Entry],
        command: Option<&Command>,
    ) -> Result<u64, ControlError> {
        if !self.map.writable {
            return Err(ControlError::Invalid(
                self.path.clone(),
                "opened read-only".into(),
            ));
        }
        if entries.len() > MAX_ENTRIES {
            return Err(ControlError::TooLong("the latched scopes", MAX_ENTRIES));
        }
        for e in entries {
            check_str("account", e.account.as_deref(), ACCOUNT_LEN)?;
            check_str("strategy", e.strategy.as_deref(), STRATEGY_LEN)?;
            check_str("venue", e.venue.as_deref(), VENUE_LEN)?;
        }
        if let Some(c) = command {
            check_str("scope text", Some(&c.scope), C_SCOPE.1)?;
            check_str("operator", Some(&c.operator), C_OPERATOR.1)?;
            check_str("second operator", Some(&c.second_operator), C_SECOND.1)?;
            check_str("host", Some(&c.host), C_HOST.1)?;
        }
        let m = &self.map;
        let epoch_w = m.word(OFF_EPOCH / 8);
        let e = epoch_w.load(Ordering::Relaxed);
        let start = if e & 1 == 1 { e + 1 } else { e + 2 }; // a crashed writer left it odd
        epoch_w.store(start - 1, Ordering::Relaxed);
        fence(Ordering::Release);
        m.store(OFF_N, entries.len() as u64);
        for (i, en) in entries.iter().enumerate() {
            let base = HEADER + i * ENTRY;
            let mask = (en.account.is_some() as u64)
                | (en.strategy.is_some() as u64) << 1
                | (en.symbol_id.is_some() as u64) << 2
                | (en.venue.is_some() as u64) << 3;
            let w0 = en.state as u64 | mask << 8 | (en.symbol_id.unwrap_or(0) as u64) << 32;
            m.store(base, w0);
            m.store(base + 8, en.scope_id);
            m.store(base + 16, en.command_id);
            m.store(base + 24, en.seq);
            m.store_bytes(base + E_ACCOUNT, opt_bytes(&en.account), ACCOUNT_LEN);
            m.store_bytes(base + E_STRATEGY, opt_bytes(&en.strategy), STRATEGY_LEN);
            m.store_bytes(base + E_VENUE, opt_bytes(&en.venue), VENUE_LEN);
        }
        if let Some(c) = command {
            let base = CMD_BASE + (c.id as usize % CMD_SLOTS) * CMD;
            m.store(base, c.id);
            m.store(base + 8, c.kind as u64);
            m.store(base + 16, c.written_ns);
            m.store(base + 24, c.seq);
            let s =
                |(off, len): (usize, usize), v: &str| m.store_bytes(base + off, v.as_bytes(), len);
            s(C_SCOPE, &c.scope);
            s(C_OPERATOR, &c.operator);
            s(C_SECOND, &c.second_operator);
            s(C_HOST, &c.host);
            s(C_REASON, truncate(&c.reason, C_REASON.1 - 1));
            m.store(OFF_LAST_CMD, c.id);
        }
        m.store(OFF_UPDATED, utc_ns());
        epoch_w.store(start, Ordering::Release);
        // the doorbell: inotify sees writes, not stores through a mapping
        self.file
            .write_all_at(&start.to_le_bytes(), OFF_EPOCH as u64)
            .map_err(io_err(&self.path))?;
        Ok(start)
    }
}

fn opt_bytes(s: &Option<String>) -> &[u8] {
    s.as_deref().map(str::as_bytes).unwrap_or(b"")
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn check_str(what: &'static str, s: Option<&str>, len: usize) -> Result<(), ControlError> {
    match s {
        Some(v) if v.len() > len || v.as_bytes().contains(&0) => {
            Err(ControlError::TooLong(what, len))
        }
        _ => Ok(()),
    }
}

/// An order field, NUL-padded into `N` words; None (or too long to be in the table) gives a
/// value no entry can hold (word 0 all ones is not valid UTF-8 padding).
#[inline(always)]
fn pad<const N: usize>(s: Option<&str>) -> [u64; N] {
    let mut out = [u64::MAX; N];
    if let Some(v) = s {
        let b = v.as_bytes();
        if b.len() <= N * 8 && !b.contains(&0) {
            let mut buf = [0u8; 40];
            buf[..b.len()].copy_from_slice(b);
            for (k, w) in out.iter_mut().enumerate() {
                let mut x = [0u8; 8];
                x.copy_from_slice(&buf[k * 8..k * 8 + 8]);
                *w = u64::from_le_bytes(x);
            }
        }
    }
    out
}

#[inline(always)]
fn field_eq<const N: usize>(m: &Map, off: usize, want: &[u64; N]) -> bool {
    want.iter()
        .enumerate()
        .all(|(k, w)| m.load(off + k * 8) == *w)
}

fn read_str(m: &Map, off: usize, len: usize) -> String {
    let mut buf = vec![0u8; len];
    m.load_bytes(off, &mut buf);
    let end = buf.iter().position(|&b| b == 0).unwrap_or(len);
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn read_entry(m: &Map, base: usize) -> Entry {
    let w0 = m.load(base);
    let mask = (w0 >> 8) & 0xff;
    let get =
        |bit: u64, off: usize, len: usize| (mask & bit != 0).then(|| read_str(m, base + off, len));
    Entry {
        state: (w0 & 0xff) as u8,
        account: get(1, E_ACCOUNT, ACCOUNT_LEN),
        strategy: get(2, E_STRATEGY, STRATEGY_LEN),
        symbol_id: (mask & 4 != 0).then_some((w0 >> 32) as u32),
        venue: get(8, E_VENUE, VENUE_LEN),
        scope_id: m.load(base + 8),
        command_id: m.load(base + 16),
        seq: m.load(base + 24),
    }
}

fn read_command(m: &Map, base: usize) -> Command {
    let s = |(off, len): (usize, usize)| read_str(m, base + off, len);
    Command {
        id: m.load(base),
        kind: m.load(base + 8) as u8,
        written_ns: m.load(base + 16),
        seq: m.load(base + 24),
        scope: s(C_SCOPE),
        operator: s(C_OPERATOR),
        second_operator: s(C_SECOND),
        host: s(C_HOST),
        reason: s(C_REASON),
    }
}

// ------------------------------------------------------------------------------------------
// presence

/// A joined process's presence file: `<procs>/<name>`, created `O_EXCL|O_NOFOLLOW`, held
/// under an exclusive `flock` for the life of the process (a file whose lock can be taken
/// belongs to a dead process: stale). Content: one JSON object, space-padded to
/// `PRESENCE_SIZE` bytes, rewritten in place with one `pwrite`.
pub struct Presence {
    file: File,
    path: PathBuf,
}

/// Size of a presence file.
pub const PRESENCE_SIZE: usize = 4096;

impl Presence {
    /// Creates and locks the presence file.
    pub fn create(path: &Path) -> Result<Presence, ControlError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(io_err(path))?;
        // SAFETY: flock on our own open fd.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(ControlError::Io(path.into(), io::Error::last_os_error()));
        }
        Ok(Presence {
            file,
            path: path.into(),
        })
    }

    /// Rewrites the content (truncated to `PRESENCE_SIZE` bytes, space padded).
    pub fn write(&self, json: &str) -> Result<(), ControlError> {
        let mut buf = vec![b' '; PRESENCE_SIZE];
        let b = json.as_bytes();
        let n = b.len().min(PRESENCE_SIZE - 1);
        buf[..n].copy_from_slice(&b[..n]);
        buf[PRESENCE_SIZE - 1] = b'\n';
        self.file.write_all_at(&buf, 0).map_err(io_err(&self.path))
    }

    /// Removes the file (a clean leave).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

// ------------------------------------------------------------------------------------------
// watcher

/// What the watcher hands to the callback.
#[derive(Debug)]
pub enum Event {
    /// The table changed (or this is the first read at start): the whole consistent copy.
    Changed(Snapshot),
    /// The state file was unreadable/invalid/removed for `loss_after`: apply the loss policy.
    Lost(String),
    /// The state file is valid again after a `Lost`.
    Restored(Snapshot),
}

/// What the callback answers, written into the presence file.
#[derive(Debug, Default, Clone)]
pub struct Ack {
    /// Id of the newest command the process has applied.
    pub last_command_id: u64,
    /// UTC ns at which the process's gate was closed by it (0: none).
    pub gate_closed_ns: u64,
    /// JSON of the process's state per scope.
    pub states_json: String,
}

/// Settings of a watcher.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// The state file.
    pub state_path: PathBuf,
    /// This process's presence file.
    pub presence_path: PathBuf,
    /// JSON object of the fixed facts (host, pid, name, log directory).
    pub static_json: String,
    /// How often the presence heartbeat is rewritten (and the file's health checked).
    pub heartbeat: Duration,
    /// How long the state file may be bad before `Event::Lost`.
    pub loss_after: Duration,
}

type Callback = Box<dyn FnMut(Event) -> Option<Ack> + Send>;

struct Shared {
    table: Mutex<Option<Arc<ControlTable>>>,
    stop_fd: i32,
}

/// A running watcher thread. Drop (or `stop`) stops it, waits for it, and removes the
/// presence file.
pub struct Watcher {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Watcher {
    /// Opens the table, creates the presence file, runs the callback once with the current
    /// table (so the caller's gate is up to date before this returns), then starts the thread.
    pub fn start(cfg: WatchConfig, mut callback: Callback) -> Result<Watcher, ControlError> {
        let table = Arc::new(ControlTable::open(&cfg.state_path)?);
        let snap = table.snapshot()?;
        let presence = Presence::create(&cfg.presence_path)?;
        let ack = callback(Event::Changed(snap.clone())).unwrap_or_default();
        let dir = cfg
            .state_path
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf();
        // SAFETY: plain syscall creating a new fd.
        let ino = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if ino < 0 {
            presence.remove();
            return Err(ControlError::Io(dir, io::Error::last_os_error()));
        }
        let cdir = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| ControlError::TooLong("path", 4096))?;
        let mask = libc::IN_MODIFY
            | libc::IN_ATTRIB
            | libc::IN_CREATE
            | libc::IN_DELETE
            | libc::IN_MOVED_FROM
            | libc::IN_MOVED_TO
            | libc::IN_DELETE_SELF
            | libc::IN_MOVE_SELF;
        // SAFETY: valid inotify fd and NUL-terminated path.
        if unsafe { libc::inotify_add_watch(ino, cdir.as_ptr(), mask) } < 0 {
            let e = io::Error::last_os_error();
            // SAFETY: closing the fd made above.
            unsafe { libc::close(ino) };
            presence.remove();
            return Err(ControlError::Io(dir, e));
        }
        // SAFETY: plain syscall creating a new fd.
        let stop_fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if stop_fd < 0 {
            // SAFETY: closing the fd made above.
            unsafe { libc::close(ino) };
            presence.remove();
            return Err(ControlError::Io(dir, io::Error::last_os_error()));
        }
        let shared = Arc::new(Shared {
            table: Mutex::new(Some(table.clone())),
            stop_fd,
        });
        let mut st = Loop {
            cfg,
            table,
            presence,
            ino,
            stop_fd,
            ack,
            epoch: snap.epoch,
            bad_since: None,
            lost: false,
            shared: shared.clone(),
        };
        st.write_presence();
        let thread = std::thread::Builder::new()
            .name("ksa-control".into())
            .spawn(move || st.run(&mut callback))
            .map_err(|e| ControlError::Io("ksa-control thread".into(), e))?;
        Ok(Watcher {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The table currently mapped (replaced when the file comes back after a loss).
    pub fn table(&self) -> Option<Arc<ControlTable>> {
        self.shared.table.lock().ok().and_then(|t| t.clone())
    }

    /// Stops the thread and waits for it (idempotent). The presence file is removed.
    pub fn stop(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes to our eventfd.
        unsafe { libc::write(self.shared.stop_fd, (&one as *const u64).cast(), 8) };
        let h = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = h {
            let _ = h.join();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop();
        // SAFETY: the thread is joined; nobody else uses stop_fd.
        unsafe { libc::close(self.shared.stop_fd) };
    }
}

struct Loop {
    cfg: WatchConfig,
    table: Arc<ControlTable>,
    presence: Presence,
    ino: i32,
    stop_fd: i32,
    ack: Ack,
    epoch: u64,
    bad_since: Option<Instant>,
    lost: bool,
    shared: Arc<Shared>,
}

impl Loop {
    fn write_presence(&self) {
        let json = format!(
            "{{\"static\":{},\"states\":{},\"last_command_id\":{},\"gate_closed_ns\":{},\"heartbeat_ns\":{},\"control\":\"{}\"}}",
            if self.cfg.static_json.is_empty() { "{}" } else { &self.cfg.static_json },
            if self.ack.states_json.is_empty() { "{}" } else { &self.ack.states_json },
            self.ack.last_command_id,
            self.ack.gate_closed_ns,
            utc_ns(),
            if self.lost { "lost" } else { "ok" },
        );
        let _ = self.presence.write(&json);
    }

    fn run(&mut self, cb: &mut Callback) {
        let mut last_beat = Instant::now();
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.ino,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.stop_fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let timeout = self
                .cfg
                .heartbeat
                .min(if self.bad_since.is_some() && !self.lost {
                    Duration::from_millis(50)
                } else {
                    self.cfg.heartbeat
                });
            // SAFETY: two valid pollfds; blocks (parks) until an event or the timeout.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout.as_millis().max(1) as i32) };
            if rc > 0 && fds[1].revents != 0 {
                break;
            }
            if rc > 0 && fds[0].revents != 0 {
                let mut buf = [0u8; 4096];
                // SAFETY: reading into a local buffer from our non-blocking inotify fd; the
                // events only tell us to look again.
                while unsafe { libc::read(self.ino, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
            }
            let mut changed = self.check(cb);
            if !changed && self.table.epoch() != self.epoch && self.bad_since.is_none() {
                changed = self.deliver(cb);
            }
            if changed || last_beat.elapsed() >= self.cfg.heartbeat {
                self.write_presence();
                last_beat = Instant::now();
            }
        }
        // SAFETY: closing our own inotify fd once, at the end of the thread.
        unsafe { libc::close(self.ino) };
        self.presence.remove();
    }

    fn deliver(&mut self, cb: &mut Callback) -> bool {
        match self.table.snapshot() {
            Ok(s) if s.epoch != self.epoch => {
                self.epoch = s.epoch;
                if let Some(a) = cb(Event::Changed(s)) {
                    self.ack = a;
                }
                true
            }
            _ => false,
        }
    }

    /// Health of the state file; control loss after `loss_after`; reopens a new file.
    fn check(&mut self, cb: &mut Callback) -> bool {
        if self.table.still_current() && self.table.snapshot().is_ok() {
            self.bad_since = None;
            if self.lost {
                return self.restore(cb, self.table.clone());
            }
            return false;
        }
        // the path may name a new, valid file (recreated by an operator)
        if let Ok(t) = ControlTable::open(&self.cfg.state_path) {
            if t.snapshot().is_ok() {
                let t = Arc::new(t);
                self.bad_since = None;
                if let Ok(mut g) = self.shared.table.lock() {
                    *g = Some(t.clone());
                }
                return self.restore(cb, t);
            }
        }
        let since = *self.bad_since.get_or_insert_with(Instant::now);
        if !self.lost && since.elapsed() >= self.cfg.loss_after {
            self.lost = true;
            let why = format!(
                "control state file {} unreadable, invalid or removed for {:.1} s",
                self.cfg.state_path.display(),
                since.elapsed().as_secs_f64()
            );
            if let Some(a) = cb(Event::Lost(why)) {
                self.ack = a;
            }
            return true;
        }
        false
    }

    fn restore(&mut self, cb: &mut Callback, t: Arc<ControlTable>) -> bool {
        let Ok(s) = t.snapshot() else { return false };
        let was_lost = std::mem::replace(&mut self.lost, false);
        self.table = t;
        self.epoch = s.epoch;
        let ev = if was_lost {
            Event::Restored(s)
        } else {
            Event::Changed(s)
        };
        if let Some(a) = cb(ev) {
            self.ack = a;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(state: u8, account: Option<&str>, symbol: Option<u32>, id: u64) -> Entry {
        Entry {
            state,
            account: account.map(Into::into),
            symbol_id: symbol,
            scope_id: id,
            ..Default::default()
        }
    }

    #[test]
    fn scope_cover_semantics_match_scope_covers() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state");
        ControlTable::create(&p, 0o640).unwrap();
        let w = ControlTable::open_writer(&p).unwrap();
        let r = ControlTable::open(&p).unwrap();
        assert_eq!(r.state_for(Some("A"), None, Some(7), None), (ACTIVE, 0));
        w.publish(
            &[
                entry(REDUCING, Some("A"), None, 11),
                entry(HALTED, None, Some(7), 12),
            ],
            None,
        )
        .unwrap();
        assert_eq!(r.state_for(Some("A"), None, Some(8), None), (REDUCING, 11));
        assert_eq!(r.state_for(Some("A"), None, Some(7), None), (HALTED, 12));
        assert_eq!(r.state_for(Some("B"), None, Some(8), None), (ACTIVE, 0));
        // an order attribute left None matches no set field
        assert_eq!(r.state_for(None, None, None, None), (ACTIVE, 0));
        assert_eq!(
            r.state_for(Some("A-longer-name"), None, None, None),
            (ACTIVE, 0)
        );
        w.publish(&[entry(HALTED, None, None, 0)], None).unwrap();
        assert_eq!(r.state_for(None, None, None, None), (HALTED, 0));
        w.publish(&[], None).unwrap();
        assert_eq!(r.state_for(Some("A"), None, Some(7), None), (ACTIVE, 0));
    }

    #[test]
    fn odd_epoch_or_invalid_mapping_fails_closed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state");
        ControlTable::create(&p, 0o640).unwrap();
        let r = ControlTable::open(&p).unwrap();
        // a writer that died mid-update leaves the epoch odd
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(&7u64.to_le_bytes(), OFF_EPOCH as u64)
            .unwrap();
        assert_eq!(
            r.state_for(Some("A"), None, None, None),
            (HALTED, FAIL_CLOSED_SCOPE)
        );
        // the next writer repairs it
        ControlTable::open_writer(&p)
            .unwrap()
            .publish(&[], None)
            .unwrap();
        assert_eq!(r.state_for(Some("A"), None, None, None), (ACTIVE, 0));
        r.set_valid(false);
        assert_eq!(
            r.state_for(Some("A"), None, None, None),
            (HALTED, FAIL_CLOSED_SCOPE)
        );
    }

    #[test]
    fn bad_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state");
        std::fs::write(&p, vec![0u8; FILE_SIZE]).unwrap();
        assert!(matches!(
            ControlTable::open(&p),
            Err(ControlError::Invalid(..))
        ));
        std::fs::write(&p, b"short").unwrap();
        assert!(matches!(
            ControlTable::open(&p),
            Err(ControlError::Invalid(..))
        ));
        let q = d.path().join("ok");
        ControlTable::create(&q, 0o646).unwrap();
        assert!(matches!(
            ControlTable::open(&q),
            Err(ControlError::Invalid(..))
        ));
        let l = d.path().join("link");
        std::os::unix::fs::symlink(&q, &l).unwrap();
        assert!(ControlTable::open(&l).is_err());
        let w = {
            ControlTable::create(&d.path().join("w"), 0o640).unwrap();
            ControlTable::open_writer(&d.path().join("w")).unwrap()
        };
        let long = "x".repeat(33);
        let e = w
            .publish(&[entry(HALTED, Some(&long), None, 1)], None)
            .unwrap_err();
        assert!(e.to_string().contains("account"), "{e}");
    }

    #[test]
    fn commands_ring_keeps_the_last_ones_in_order() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state");
        ControlTable::create(&p, 0o640).unwrap();
        let w = ControlTable::open_writer(&p).unwrap();
        for id in 1..=11u64 {
            let c = Command {
                id,
                kind: 1,
                scope: "firm".into(),
                operator: "alice".into(),
                reason: "é".repeat(400),
                ..Default::default()
            };
            w.publish(&[entry(HALTED, None, None, 0)], Some(&c))
                .unwrap();
        }
        let s = ControlTable::open(&p).unwrap().snapshot().unwrap();
        assert_eq!(s.last_command_id, 11);
        assert_eq!(s.entries.len(), 1);
        assert_eq!(
            ControlTable::open(&p).unwrap().snapshot().unwrap().entries[0].state,
            HALTED
        );
        let ids: Vec<u64> = s.commands.iter().map(|c| c.id).collect();
        assert_eq!(ids, (4..=11).collect::<Vec<_>>());
        assert!(s.commands[0].reason.len() <= 511 && s.commands[0].reason.starts_with('é'));
    }

    #[test]
    fn concurrent_readers_never_see_a_torn_table() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state");
        ControlTable::create(&p, 0o640).unwrap();
        let w = ControlTable::open_writer(&p).unwrap();
        let r = Arc::new(ControlTable::open(&p).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (r, stop) = (r.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let (st, id) = r.state_for(Some("AAAA"), None, Some(1), None);
                        // every published table is consistent: HALTED only with id 2, REDUCING
                        // only with id 1; a writer hammering the table may make a read fail
                        // closed, never inconsistent
                        assert!(
                            matches!(
                                (st, id),
                                (ACTIVE, 0)
                                    | (REDUCING, 1)
                                    | (HALTED, 2)
                                    | (HALTED, FAIL_CLOSED_SCOPE)
                            ),
                            "{st} {id}"
                        );
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        for i in 0..20_000u32 {
            let es = match i % 3 {
                0 => vec![],
                1 => vec![entry(REDUCING, Some("AAAA"), None, 1)],
                _ => vec![
                    entry(HALTED, None, Some(1), 2),
                    entry(REDUCING, Some("AAAA"), None, 1),
                ],
            };
            w.publish(&es, None).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for h in readers {
            assert!(h.join().unwrap() > 0);
        }
    }

    #[test]
    fn watcher_delivers_changes_and_presence_is_locked() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state");
        ControlTable::create(&p, 0o640).unwrap();
        std::fs::create_dir(d.path().join("procs")).unwrap();
        let pres = d.path().join("procs").join("me");
        let (tx, rx) = std::sync::mpsc::channel();
        let w = Watcher::start(
            WatchConfig {
                state_path: p.clone(),
                presence_path: pres.clone(),
                static_json: "{\"pid\":1}".into(),
                heartbeat: Duration::from_millis(200),
                loss_after: Duration::from_millis(300),
            },
            Box::new(move |ev| {
                let _ = tx.send(format!("{ev:?}"));
                Some(Ack {
                    last_command_id: 1,
                    gate_closed_ns: 5,
                    states_json: "{}".into(),
                })
            }),
        )
        .unwrap();
        assert!(rx
            .recv_timeout(Duration::from_secs(2))
            .unwrap()
            .starts_with("Changed"));
        let f = File::open(&pres).unwrap();
        // SAFETY: flock on a fresh fd of the presence file: held by the watcher -> EWOULDBLOCK
        assert_ne!(
            // SAFETY: flock on a fresh fd of the presence file.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
            0
        );
        let wr = ControlTable::open_writer(&p).unwrap();
        wr.publish(&[entry(HALTED, None, None, 0)], None).unwrap();
        assert!(rx
            .recv_timeout(Duration::from_secs(2))
            .unwrap()
            .starts_with("Changed"));
        std::fs::remove_file(&p).unwrap();
        assert!(rx
            .recv_timeout(Duration::from_secs(3))
            .unwrap()
            .starts_with("Lost"));
        ControlTable::create(&p, 0o640).unwrap();
        assert!(rx
            .recv_timeout(Duration::from_secs(3))
            .unwrap()
            .starts_with("Restored"));
        w.stop();
        assert!(!pres.exists());
    }
}
