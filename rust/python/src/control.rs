//! Control-plane binding: `ControlTable` (the shared state file) and `ControlWatcher` (the
//! watcher thread handing commands to a Python callback). Conversions and error mapping only;
//! what a command means is decided in `killswitch_audit.control`.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ksa_core::control as core;
use pyo3::exceptions::{PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

fn to_py(e: core::ControlError) -> PyErr {
    match e {
        core::ControlError::Io(p, err) => PyOSError::new_err((
            err.raw_os_error().unwrap_or(0),
            format!("{}: {err}", p.display()),
        )),
        other => PyValueError::new_err(other.to_string()),
    }
}

fn seconds(name: &str, v: f64) -> PyResult<Duration> {
    if !v.is_finite() || v <= 0.0 || v > 86_400.0 {
        return Err(PyValueError::new_err(format!(
            "{name} must be in (0, 86400] seconds, got {v}"
        )));
    }
    Ok(Duration::from_secs_f64(v))
}

fn entry_dict<'py>(py: Python<'py>, e: &core::Entry) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("state", e.state)?;
    d.set_item("account", &e.account)?;
    d.set_item("strategy", &e.strategy)?;
    d.set_item("symbol_id", e.symbol_id)?;
    d.set_item("venue", &e.venue)?;
    d.set_item("scope_id", e.scope_id)?;
    d.set_item("command_id", e.command_id)?;
    d.set_item("seq", e.seq)?;
    Ok(d)
}

fn command_dict<'py>(py: Python<'py>, c: &core::Command) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("id", c.id)?;
    d.set_item("kind", c.kind)?;
    d.set_item("written_ns", c.written_ns)?;
    d.set_item("seq", c.seq)?;
    d.set_item("scope", &c.scope)?;
    d.set_item("operator", &c.operator)?;
    d.set_item("second_operator", &c.second_operator)?;
    d.set_item("host", &c.host)?;
    d.set_item("reason", &c.reason)?;
    Ok(d)
}

fn snapshot_dict<'py>(py: Python<'py>, s: &core::Snapshot) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("epoch", s.epoch)?;
    d.set_item("last_command_id", s.last_command_id)?;
    d.set_item("updated_ns", s.updated_ns)?;
    let es = PyList::empty(py);
    for e in &s.entries {
        es.append(entry_dict(py, e)?)?;
    }
    d.set_item("entries", es)?;
    let cs = PyList::empty(py);
    for c in &s.commands {
        cs.append(command_dict(py, c)?)?;
    }
    d.set_item("commands", cs)?;
    Ok(d)
}

/// `d[key]` as `$ty` (missing or None: `$default`); a wrong type names the key.
macro_rules! get {
    ($d:expr, $key:expr, $ty:ty, $default:expr) => {
        match $d.get_item($key)? {
            None => $default,
            Some(v) if v.is_none() => $default,
            Some(v) => v.extract::<$ty>().map_err(|e| {
                let e: PyErr = e.into();
                PyTypeError::new_err(format!("{}: {e}", $key))
            })?,
        }
    };
}

fn entry_from(d: &Bound<'_, PyDict>) -> PyResult<core::Entry> {
    let state: u8 = get!(d, "state", u8, 0);
    if state != core::REDUCING && state != core::HALTED {
        return Err(PyValueError::new_err(format!(
            "entry state must be 1 (REDUCING) or 2 (HALTED), got {state}"
        )));
    }
    Ok(core::Entry {
        state,
        account: get!(d, "account", Option<String>, None),
        strategy: get!(d, "strategy", Option<String>, None),
        symbol_id: get!(d, "symbol_id", Option<u32>, None),
        venue: get!(d, "venue", Option<String>, None),
        scope_id: get!(d, "scope_id", u64, 0),
        command_id: get!(d, "command_id", u64, 0),
        seq: get!(d, "seq", u64, 0),
    })
}

fn command_from(d: &Bound<'_, PyDict>) -> PyResult<core::Command> {
    let kind: u8 = get!(d, "kind", u8, 0);
    if !(1..=3).contains(&kind) {
        return Err(PyValueError::new_err(format!(
            "command kind must be 1 (halt), 2 (reduce-only) or 3 (reset), got {kind}"
        )));
    }
    Ok(core::Command {
        id: get!(d, "id", u64, 0),
        kind,
        written_ns: get!(d, "written_ns", u64, 0),
        seq: get!(d, "seq", u64, 0),
        scope: get!(d, "scope", String, String::new()),
        operator: get!(d, "operator", String, String::new()),
        second_operator: get!(d, "second_operator", String, String::new()),
        host: get!(d, "host", String, String::new()),
        reason: get!(d, "reason", String, String::new()),
    })
}

/// The control plane's shared state file, mapped (see `ksa_core::control`).
#[pyclass(name = "ControlTable", module = "killswitch_audit._native", frozen)]
pub struct ControlTable {
    pub(crate) inner: Arc<core::ControlTable>,
}

#[pymethods]
impl ControlTable {
    /// Maps `path` read-only (`writable=True`: read-write, for the operator's CLI). Raises
    /// OSError (missing, permission) or ValueError (size, magic, mode, not a regular file).
    #[new]
    #[pyo3(signature = (path, writable=false))]
    fn new(path: PathBuf, writable: bool) -> PyResult<Self> {
        let t = if writable {
            core::ControlTable::open_writer(&path)
        } else {
            core::ControlTable::open(&path)
        };
        Ok(ControlTable {
            inner: Arc::new(t.map_err(to_py)?),
        })
    }

    /// Creates an empty state file (`O_EXCL|O_NOFOLLOW`, exactly `mode`, preallocated).
    #[staticmethod]
    #[pyo3(signature = (path, mode=0o640))]
    fn create(path: PathBuf, mode: u32) -> PyResult<()> {
        core::ControlTable::create(&path, mode & 0o7777).map_err(to_py)
    }

    /// `(state, scope_id)` of an order: 0 ACTIVE, 1 REDUCING, 2 HALTED (fails closed).
    #[pyo3(signature = (account=None, strategy=None, symbol_id=None, venue=None))]
    fn state_for(
        &self,
        account: Option<&str>,
        strategy: Option<&str>,
        symbol_id: Option<u32>,
        venue: Option<&str>,
    ) -> (u8, u64) {
        self.inner.state_for(account, strategy, symbol_id, venue)
    }

    /// A consistent copy: `{epoch, last_command_id, updated_ns, entries, commands}`.
    fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let t = self.inner.clone();
        let s = py.detach(move || t.snapshot()).map_err(to_py)?;
        snapshot_dict(py, &s)
    }

    /// Publishes `entries` (dicts: state, account, strategy, symbol_id, venue, scope_id,
    /// command_id, seq) and optionally `command` (dict: id, kind, written_ns, seq, scope,
    /// operator, second_operator, host, reason). Returns the new epoch.
    #[pyo3(signature = (entries, command=None))]
    fn publish(
        &self,
        py: Python<'_>,
        entries: Vec<Bound<'_, PyDict>>,
        command: Option<Bound<'_, PyDict>>,
    ) -> PyResult<u64> {
        let es = entries
            .iter()
            .map(entry_from)
            .collect::<PyResult<Vec<_>>>()?;
        let c = command.as_ref().map(command_from).transpose()?;
        let t = self.inner.clone();
        py.detach(move || t.publish(&es, c.as_ref())).map_err(to_py)
    }

    /// The seqlock epoch.
    #[getter]
    fn epoch(&self) -> u64 {
        self.inner.epoch()
    }

    /// Whether `state_for` believes the mapping (False: fails closed).
    #[getter]
    fn valid(&self) -> bool {
        self.inner.is_valid()
    }

    /// Benchmarks only: spins (detached, no GIL) until `state_for(...)` answers at least
    /// `state`, then returns the UTC ns at which it saw it (0: timed out).
    #[pyo3(signature = (state, timeout_s, account=None, strategy=None, symbol_id=None, venue=None))]
    #[allow(clippy::too_many_arguments)]
    fn spin_until(
        &self,
        py: Python<'_>,
        state: u8,
        timeout_s: f64,
        account: Option<String>,
        strategy: Option<String>,
        symbol_id: Option<u32>,
        venue: Option<String>,
    ) -> PyResult<u64> {
        let timeout = seconds("timeout_s", timeout_s)?;
        let t = self.inner.clone();
        Ok(py.detach(move || {
            let end = Instant::now() + timeout;
            loop {
                for _ in 0..1000 {
                    let (s, _) = t.state_for(
                        account.as_deref(),
                        strategy.as_deref(),
                        symbol_id,
                        venue.as_deref(),
                    );
                    if s >= state {
                        return core::utc_ns();
                    }
                }
                if Instant::now() >= end {
                    return 0;
                }
            }
        }))
    }
}

/// The watcher thread of a joined process (see `ksa_core::control::Watcher`). The callback
/// `callback(kind, payload)` runs on that thread, attached to the interpreter only for the
/// call: kind "changed" / "restored" with the snapshot dict, or "lost" with a message. It
/// returns `(last_command_id, gate_closed_ns, states_json)` for the presence file, or None.
#[pyclass(name = "ControlWatcher", module = "killswitch_audit._native", frozen)]
pub struct ControlWatcher {
    inner: core::Watcher,
}

fn call_back(cb: &Py<PyAny>, ev: core::Event) -> Option<core::Ack> {
    // try_attach: an interpreter that is finalizing gets no more callbacks (no hang, no abort)
    Python::try_attach(|py| {
        let r = match &ev {
            core::Event::Changed(s) => {
                snapshot_dict(py, s).and_then(|d| cb.call1(py, ("changed", d)))
            }
            core::Event::Restored(s) => {
                snapshot_dict(py, s).and_then(|d| cb.call1(py, ("restored", d)))
            }
            core::Event::Lost(why) => cb.call1(py, ("lost", why.as_str())),
        };
        match r {
            Ok(v) if v.is_none(py) => None,
            Ok(v) => match v.extract::<(u64, u64, String)>(py) {
                Ok((last_command_id, gate_closed_ns, states_json)) => Some(core::Ack {
                    last_command_id,
                    gate_closed_ns,
                    states_json,
                }),
                Err(e) => {
                    e.write_unraisable(py, None);
                    None
                }
            },
            Err(e) => {
                e.write_unraisable(py, None);
                None
            }
        }
    })
    .flatten()
}

#[pymethods]
impl ControlWatcher {
    /// Opens the table, creates and locks the presence file, runs `callback("changed", ...)`
    /// once with the current table before returning, then watches.
    #[new]
    #[pyo3(signature = (state_path, presence_path, static_json, callback, heartbeat_s=1.0, loss_after_s=5.0))]
    fn new(
        py: Python<'_>,
        state_path: PathBuf,
        presence_path: PathBuf,
        static_json: String,
        callback: Bound<'_, PyAny>,
        heartbeat_s: f64,
        loss_after_s: f64,
    ) -> PyResult<Self> {
        if !callback.is_callable() {
            return Err(PyTypeError::new_err("callback must be callable"));
        }
        let cfg = core::WatchConfig {
            state_path,
            presence_path,
            static_json,
            heartbeat: seconds("heartbeat_s", heartbeat_s)?,
            loss_after: seconds("loss_after_s", loss_after_s)?,
        };
        let cb: Py<PyAny> = callback.unbind();
        // Not detached: `start` runs the first callback on this (attached) thread so that the
        // caller's gate holds the current table before this returns; it only opens files and
        // spawns the thread, it never waits.
        let _ = py;
        let watcher =
            core::Watcher::start(cfg, Box::new(move |ev| call_back(&cb, ev))).map_err(to_py)?;
        Ok(ControlWatcher { inner: watcher })
    }

    /// The table currently mapped.
    #[getter]
    fn table(&self) -> Option<ControlTable> {
        self.inner.table().map(|inner| ControlTable { inner })
    }

    /// Stops the thread (detached, waits for it) and removes the presence file. Idempotent.
    fn stop(&self, py: Python<'_>) {
        py.detach(|| self.inner.stop());
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ControlTable>()?;
    m.add_class::<ControlWatcher>()?;
    Ok(())
}
