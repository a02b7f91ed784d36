//! The watcher thread of a joined process: waits on inotify (and an eventfd to stop),
//! hands each new table to the callback, rewrites the presence heartbeat, and reports
//! control loss when the state file stays bad for `loss_after`, then its return.
use super::{utc_ns, ControlError, ControlTable, Presence, Snapshot};
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
