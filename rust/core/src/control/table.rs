//! [`ControlTable`]: the state file mapped; creating and opening it, telling whether it is
//! still the file at its path, and the seqlock: the reader (`state_for` on the hot path,
//! `snapshot`) and the writer (`publish`), as described in the module above.
use super::fields::{check_str, field_eq, opt_bytes, pad, read_command, read_entry, truncate};
use super::map::{open_checked, Map};
use super::*;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{fence, AtomicBool, Ordering};

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
