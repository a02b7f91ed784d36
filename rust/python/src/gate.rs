//! `KillSwitchCore` for Python: argument conversion around `ksa_core::killswitch`.
//!
//! `allows(scope, reduces_position=False)` is the order path: the order's attributes are read
//! from the `Scope` tuple as borrowed `&str` (no allocation), the core gate decides. Stops,
//! resets and restore are cold paths. No method releases the GIL: none of them waits (the
//! kill switch waits for the engine through `AuditLogger.flush*`, which does).
use crate::logger::AuditLogger;
use ksa_core::gate::{OrderScope, ScopeKey};
use ksa_core::killswitch::{KillSwitchCore as Core, PendingReset, ResetError};
use ksa_core::latch::Latch;
use ksa_core::restore;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The native kill switch (see `killswitch_audit.killswitch.KillSwitch`).
#[pyclass(name = "KillSwitchCore", module = "killswitch_audit._native", frozen)]
pub struct KillSwitchCore {
    core: Core,
    pending: Mutex<Option<PendingReset>>,
}

type ScopeFields = (Option<String>, Option<String>, Option<u32>, Option<String>);

fn key((account, strategy, symbol_id, venue): ScopeFields) -> ScopeKey {
    ScopeKey {
        account: account.map(Into::into),
        strategy: strategy.map(Into::into),
        symbol_id,
        venue: venue.map(Into::into),
    }
}

fn text_field<'a>(item: &'a Bound<'_, PyAny>, name: &str) -> PyResult<Option<&'a str>> {
    if item.is_none() {
        return Ok(None);
    }
    match item.cast::<PyString>() {
        Ok(s) => Ok(Some(s.to_str()?)),
        Err(_) => Err(PyTypeError::new_err(format!(
            "Scope.{name} must be a str or None, not {}",
            item.get_type().name()?
        ))),
    }
}

/// The order's attributes from a `Scope` (a 4-tuple) or None; TypeError for anything else.
fn with_order<R>(
    scope: Option<&Bound<'_, PyAny>>,
    f: impl FnOnce(&OrderScope<'_>) -> R,
) -> PyResult<R> {
    let Some(s) = scope.filter(|s| !s.is_none()) else {
        return Ok(f(&OrderScope::default()));
    };
    let t = match s.cast::<PyTuple>() {
        Ok(t) if t.len() == 4 => t,
        _ => {
            return Err(PyTypeError::new_err(format!(
                "scope must be a Scope or None, not {}",
                s.get_type().name()?
            )))
        }
    };
    // SAFETY: `t` is a tuple of exactly 4 items (checked above); the borrowed items live as
    // long as the tuple, which outlives this call.
    let (a, st, sym, v) = unsafe {
        (
            t.get_borrowed_item_unchecked(0),
            t.get_borrowed_item_unchecked(1),
            t.get_borrowed_item_unchecked(2),
            t.get_borrowed_item_unchecked(3),
        )
    };
    let order = OrderScope {
        account: text_field(&a, "account")?,
        strategy: text_field(&st, "strategy")?,
        symbol_id: if sym.is_none() {
            None
        } else {
            Some(sym.extract()?)
        },
        venue: text_field(&v, "venue")?,
    };
    Ok(f(&order))
}

fn reset_error(e: ResetError) -> PyErr {
    PyRuntimeError::new_err(match e {
        ResetError::NotRestricted => "not restricted".to_string(),
        ResetError::Busy => "another reset of this kill switch is in progress".to_string(),
        ResetError::NotAudited(why) => why,
        ResetError::Superseded => {
            "a halt of the scope arrived during the reset: the newer halt stands".to_string()
        }
    })
}

#[pymethods]
impl KillSwitchCore {
    /// `audit_logger`: a native AuditLogger (anything else: nothing is audited by the core);
    /// `latch_dir`: where `halt.state` lives (None: no latch file).
    #[new]
    #[pyo3(signature = (audit_logger=None, latch_dir=None, denial_interval_ns=100_000_000))]
    fn new(
        audit_logger: Option<&Bound<'_, PyAny>>,
        latch_dir: Option<PathBuf>,
        denial_interval_ns: u64,
    ) -> PyResult<Self> {
        let sink = audit_logger
            .and_then(|l| l.cast::<AuditLogger>().ok())
            .map(|l| l.get().core() as Arc<dyn ksa_core::killswitch::AuditSink>);
        let latch = latch_dir
            .map(|d| {
                Latch::open(&d).map_err(|e| {
                    PyOSError::new_err(format!(
                        "{}: cannot open the halt latch file: {e}",
                        d.join(ksa_core::latch::FILE_NAME).display()
                    ))
                })
            })
            .transpose()?;
        Ok(KillSwitchCore {
            core: Core::new(sink, latch, denial_interval_ns),
            pending: Mutex::new(None),
        })
    }

    /// May an order with attributes `scope` (a Scope, or None) be sent? ACTIVE: yes;
    /// REDUCING: only when `reduces_position`; HALTED: no.
    #[pyo3(signature = (scope=None, reduces_position=false))]
    fn allows(&self, scope: Option<&Bound<'_, PyAny>>, reduces_position: bool) -> PyResult<bool> {
        if self.core.gate.is_clear() {
            return Ok(true); // nothing restricted: the order's attributes need not be read
        }
        with_order(scope, |o| self.core.allows(o, reduces_position))
    }

    /// The state orders with attributes `scope` are under (0 ACTIVE, 1 REDUCING, 2 HALTED).
    #[pyo3(signature = (scope=None))]
    fn state(&self, scope: Option<&Bound<'_, PyAny>>) -> PyResult<u8> {
        with_order(scope, |o| self.core.gate.decide(o).0)
    }

    /// The stop sequence: returns (seq or -1, old state, new state, blocked monotonic ns,
    /// audited monotonic ns, latched).
    #[allow(clippy::too_many_arguments)]
    fn stop(
        &self,
        scope: ScopeFields,
        scope_id: u64,
        scope_text: &str,
        target: u8,
        reason: u16,
        symbol_id: u32,
        position_size: i64,
        pnl_cents: i64,
    ) -> (i64, u8, u8, u64, u64, bool) {
        let o = self.core.stop(
            &key(scope),
            scope_id,
            scope_text,
            target,
            reason,
            symbol_id,
            position_size,
            pnl_cents,
        );
        (
            o.seq.map_or(-1, |s| s as i64),
            o.old,
            o.new,
            o.blocked_ns,
            o.audited_ns,
            o.latched,
        )
    }

    /// Writes RESET + STATE_CHANGE for `scope_id`; returns (RESET seq, old state). Raises
    /// RuntimeError naming why not (not restricted, busy, not audited).
    fn begin_reset(&self, scope_id: u64) -> PyResult<(u64, u8)> {
        let p = self.core.begin_reset(scope_id).map_err(reset_error)?;
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(p);
        Ok((p.seq, p.old))
    }

    /// Opens the gate for the pending reset's scope; RuntimeError if superseded.
    fn finish_reset(&self) -> PyResult<u8> {
        let p = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("no reset in progress"))?;
        self.core.finish_reset(p).map_err(reset_error)
    }

    /// Abandons the pending reset: the restriction stays and the log says so.
    fn abort_reset(&self) {
        if let Some(p) = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let state = self
                .core
                .gate
                .generation_of(p.scope_id())
                .map_or(ksa_core::gate::HALTED, |g| g.0);
            self.core.abort_reset(p.scope_id(), state);
        }
    }

    /// One record (kind, code, ...); the seq, or -1 when the engine refused it.
    #[pyo3(signature = (kind, code=0, symbol_id=0, a=0, b=0, c=0, emergency=false))]
    #[allow(clippy::too_many_arguments)]
    fn audit(
        &self,
        kind: u8,
        code: u16,
        symbol_id: u32,
        a: i64,
        b: i64,
        c: u64,
        emergency: bool,
    ) -> i64 {
        self.core
            .audit(emergency, kind, code, symbol_id, a, b, c)
            .map_or(-1, |s| s as i64)
    }

    /// TEXT records carrying `text`, attached to record `seq`.
    fn text(&self, seq: u64, text: &str) {
        self.core.text(seq, text);
    }

    /// Installs restored restrictions: [(scope fields, scope_id, scope text, state)].
    fn restore(&self, restrictions: Vec<(ScopeFields, u64, String, u8)>) {
        self.core.restore(
            restrictions
                .into_iter()
                .map(|(f, id, text, state)| (key(f), id, text, state))
                .collect(),
        );
    }

    /// [(scope_id, state)] of every restricted scope.
    fn restrictions(&self) -> Vec<(u64, u8)> {
        self.core
            .gate
            .restrictions()
            .iter()
            .map(|r| (r.scope_id, r.state))
            .collect()
    }

    /// True when the switch writes its records to an audit engine (a native AuditLogger).
    #[getter]
    fn audits(&self) -> bool {
        self.core.audits()
    }

    /// Makes `allows()` consult the control plane's shared table (None: stop consulting it).
    #[pyo3(signature = (table=None))]
    fn attach_control(&self, table: Option<&Bound<'_, crate::control::ControlTable>>) {
        self.core.gate.attach(table.map(|t| {
            Box::new(Arc::clone(&t.get().inner)) as Box<dyn ksa_core::gate::ExternalRestrictions>
        }));
    }

    /// Orders denied so far.
    #[getter]
    fn denials(&self) -> u64 {
        self.core.denials()
    }

    /// Restricted scopes now.
    fn __len__(&self) -> usize {
        self.core.gate.restrictions().len()
    }
}

/// What restore finds in `directory` (see `ksa_core::restore`): a dict with `standing`
/// [(scope_id, state, seq)], `firm_lift_seq`, `scope_texts`, `damage` [(seq, text)],
/// `unauthenticated_lifts`, `records`.
#[pyfunction]
#[pyo3(signature = (directory, key=None))]
fn restore_state<'py>(
    py: Python<'py>,
    directory: PathBuf,
    key: Option<Vec<u8>>,
) -> PyResult<Bound<'py, PyDict>> {
    let r = py.detach(|| restore::restore(&directory, key.as_deref()));
    let d = PyDict::new(py);
    let standing: Vec<(u64, u8, u64)> = r
        .standing
        .iter()
        .map(|s| (s.scope_id, s.state, s.seq))
        .collect();
    d.set_item("standing", standing)?;
    d.set_item("firm_lift_seq", r.firm_lift_seq)?;
    d.set_item("scope_texts", r.scope_texts)?;
    d.set_item("damage", r.damage)?;
    d.set_item("unauthenticated_lifts", r.unauthenticated_lifts)?;
    d.set_item("records", r.records)?;
    Ok(d)
}

/// The HMAC key of a native AuditLogger (None: unkeyed, or not a native logger).
#[pyfunction]
fn logger_hmac_key(audit_logger: &Bound<'_, PyAny>) -> Option<Vec<u8>> {
    let l = audit_logger.cast::<AuditLogger>().ok()?;
    l.get().core().hmac_key().map(<[u8]>::to_vec)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<KillSwitchCore>()?;
    m.add_function(wrap_pyfunction!(restore_state, m)?)?;
    m.add_function(wrap_pyfunction!(logger_hmac_key, m)?)?;
    Ok(())
}
