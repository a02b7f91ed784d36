//! Order gate binding: `OrderGate.allows(scope, reduces_position=False)` as one PyO3 call.
//!
//! The gate holds a published, immutable list of restricted scopes (`RcuCell`): `allows` loads
//! it with one atomic read, returns True at once when it is empty, otherwise matches the
//! order's attributes (a `killswitch_audit.killswitch.Scope`, a 4-tuple) against each entry.
//! No lock, no allocation, no I/O on that path. A denial is counted (atomic) and, at most once
//! per interval, handed to the Python callback that writes the ORDER_DENIED record.
use ksa_core::clock;
use ksa_core::gate::{DenialLimiter, RcuCell};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// A set text field of an entry and its Python hash (str hashes are cached by the
/// interpreter, so comparing hashes first makes a mismatch one cheap call).
struct Field {
    value: Py<PyAny>,
    hash: isize,
}

/// One restricted scope: `None` fields match anything; a set field must equal the order's.
struct Entry {
    account: Option<Field>,
    strategy: Option<Field>,
    symbol_id: Option<u32>,
    venue: Option<Field>,
    state: u8,
    scope_id: u64,
}

type EntryTuple = (
    Option<Py<PyAny>>,
    Option<Py<PyAny>>,
    Option<u32>,
    Option<Py<PyAny>>,
    u8,
    u64,
);

const ACTIVE: u8 = 0;
const REDUCING: u8 = 1;

/// The native order gate (see `killswitch_audit.killswitch.KillSwitch.allows`).
#[pyclass(name = "OrderGate", module = "killswitch_audit._native", frozen)]
pub struct OrderGate {
    snapshot: RcuCell<Vec<Entry>>,
    denials: DenialLimiter,
    on_denial: Py<PyAny>,
}

/// How many `clock::ticks()` make `ns` nanoseconds (measured over ~200 µs; ticks are ns when
/// the TSC is not used). Only the denial rate limit uses it: a percent off is harmless.
fn ns_to_ticks(ns: u64) -> u64 {
    if !clock::uses_tsc() {
        return ns;
    }
    let (t0, n0) = (clock::ticks(), clock::monotonic_ns());
    let mut n1 = n0;
    while n1.saturating_sub(n0) < 200_000 {
        std::hint::spin_loop();
        n1 = clock::monotonic_ns();
    }
    let t1 = clock::ticks();
    let per_ns = t1.wrapping_sub(t0) as f64 / n1.saturating_sub(n0).max(1) as f64;
    (ns as f64 * per_ns) as u64
}

fn field_matches(want: &Option<Field>, have: &Bound<'_, PyAny>) -> PyResult<bool> {
    match want {
        None => Ok(true),
        Some(w) => {
            if have.is_none() {
                Ok(false)
            } else if have.is(&w.value) {
                Ok(true)
            } else if have.hash()? != w.hash {
                Ok(false)
            } else {
                have.eq(&w.value)
            }
        }
    }
}

impl Entry {
    fn new(py: Python<'_>, e: EntryTuple) -> PyResult<Entry> {
        let (account, strategy, symbol_id, venue, state, scope_id) = e;
        Ok(Entry {
            account: field(py, account)?,
            strategy: field(py, strategy)?,
            symbol_id,
            venue: field(py, venue)?,
            state,
            scope_id,
        })
    }

    fn clone_ref(&self, py: Python<'_>) -> Entry {
        let f = |x: &Option<Field>| x.as_ref().map(|f| f.clone_ref(py));
        Entry {
            account: f(&self.account),
            strategy: f(&self.strategy),
            symbol_id: self.symbol_id,
            venue: f(&self.venue),
            state: self.state,
            scope_id: self.scope_id,
        }
    }
}

impl Field {
    fn clone_ref(&self, py: Python<'_>) -> Field {
        Field {
            value: self.value.clone_ref(py),
            hash: self.hash,
        }
    }
}

fn field(py: Python<'_>, value: Option<Py<PyAny>>) -> PyResult<Option<Field>> {
    value
        .map(|v| {
            let hash = v.bind(py).hash()?;
            Ok(Field { value: v, hash })
        })
        .transpose()
}

/// The order's attributes as a 4-tuple (a `Scope`), or None; TypeError for anything else.
fn order_tuple<'a, 'py>(
    scope: Option<&'a Bound<'py, PyAny>>,
) -> PyResult<Option<&'a Bound<'py, PyTuple>>> {
    match scope {
        None => Ok(None),
        Some(s) if s.is_none() => Ok(None),
        Some(s) => match s.cast::<PyTuple>() {
            Ok(t) if t.len() == 4 => Ok(Some(t)),
            _ => Err(PyTypeError::new_err(format!(
                "scope must be a Scope or None, not {}",
                s.get_type().name()?
            ))),
        },
    }
}

impl OrderGate {
    /// Most restrictive (state, scope id, order symbol) among the entries covering the order.
    /// `order` must be a tuple of exactly 4 items (see `order_tuple`).
    fn resolve(entries: &[Entry], order: Option<&Bound<'_, PyTuple>>) -> PyResult<(u8, u64, u32)> {
        let mut state = ACTIVE;
        let mut deny_id = 0u64;
        let mut symbol = 0u32;
        match order {
            None => {
                for e in entries {
                    let firm = e.account.is_none()
                        && e.strategy.is_none()
                        && e.symbol_id.is_none()
                        && e.venue.is_none();
                    if firm && e.state > state {
                        state = e.state;
                        deny_id = e.scope_id;
                    }
                }
            }
            Some(t) => {
                // SAFETY: the caller checked that `t` is a tuple of exactly 4 items.
                let (account, strategy, sym_obj, venue) = unsafe {
                    (
                        t.get_borrowed_item_unchecked(0),
                        t.get_borrowed_item_unchecked(1),
                        t.get_borrowed_item_unchecked(2),
                        t.get_borrowed_item_unchecked(3),
                    )
                };
                let sym: Option<u32> = if sym_obj.is_none() {
                    None
                } else {
                    Some(sym_obj.extract()?)
                };
                symbol = sym.unwrap_or(0);
                for e in entries {
                    if e.state <= state {
                        continue;
                    }
                    let sym_ok = match e.symbol_id {
                        None => true,
                        Some(s) => sym == Some(s),
                    };
                    if sym_ok
                        && field_matches(&e.account, &account)?
                        && field_matches(&e.strategy, &strategy)?
                        && field_matches(&e.venue, &venue)?
                    {
                        state = e.state;
                        deny_id = e.scope_id;
                    }
                }
            }
        }
        Ok((state, deny_id, symbol))
    }
}

#[pymethods]
impl OrderGate {
    /// `on_denial(count, symbol_id, scope_id)` is called, at most once per `interval_ns`, with
    /// the denials since its previous call; it must not raise (errors are ignored).
    #[new]
    fn new(on_denial: Py<PyAny>, interval_ns: u64) -> Self {
        OrderGate {
            snapshot: RcuCell::new(Vec::new()),
            denials: DenialLimiter::new(ns_to_ticks(interval_ns)),
            on_denial,
        }
    }

    /// Replaces the restricted scopes: a list of (account, strategy, symbol_id, venue, state,
    /// scope_id), None fields matching anything. Readers see the old list or the new one.
    fn publish(&self, py: Python<'_>, entries: Vec<EntryTuple>) -> PyResult<()> {
        let mut list = Vec::with_capacity(entries.len());
        for e in entries {
            if e.4 != ACTIVE {
                list.push(Entry::new(py, e)?);
            }
        }
        self.snapshot.publish(list);
        Ok(())
    }

    /// Sets one scope's state (ACTIVE removes it), keeping the others: copies the current
    /// list, changes one entry, publishes. Callers serialise writers (the Python side holds
    /// the switch's lock), or one update may hide another.
    #[allow(clippy::too_many_arguments)]
    fn set_scope(
        &self,
        py: Python<'_>,
        account: Option<Py<PyAny>>,
        strategy: Option<Py<PyAny>>,
        symbol_id: Option<u32>,
        venue: Option<Py<PyAny>>,
        state: u8,
        scope_id: u64,
    ) -> PyResult<()> {
        let current = self.snapshot.load();
        let mut list = Vec::with_capacity(current.len() + 1);
        for e in current.iter().filter(|e| e.scope_id != scope_id) {
            list.push(e.clone_ref(py));
        }
        if state != ACTIVE {
            let e = (account, strategy, symbol_id, venue, state, scope_id);
            list.push(Entry::new(py, e)?);
        }
        self.snapshot.publish(list);
        Ok(())
    }

    /// May an order with attributes `scope` (a Scope, or None) be sent? ACTIVE: yes;
    /// REDUCING: only when `reduces_position`; HALTED: no.
    #[pyo3(signature = (scope=None, reduces_position=false))]
    fn allows(
        &self,
        py: Python<'_>,
        scope: Option<&Bound<'_, PyAny>>,
        reduces_position: bool,
    ) -> PyResult<bool> {
        let entries = self.snapshot.load();
        if entries.is_empty() {
            return Ok(true);
        }
        let order = order_tuple(scope)?;
        let (state, deny_id, symbol) = Self::resolve(entries, order)?;
        if state == ACTIVE || (state == REDUCING && reduces_position) {
            return Ok(true);
        }
        if let Some(n) = self.denials.deny(clock::ticks()) {
            if let Err(e) = self.on_denial.call1(py, (n, symbol, deny_id)) {
                e.write_unraisable(py, None);
            }
        }
        Ok(false)
    }

    /// The state orders with attributes `scope` are under (0 ACTIVE, 1 REDUCING, 2 HALTED).
    #[pyo3(signature = (scope=None))]
    fn state(&self, scope: Option<&Bound<'_, PyAny>>) -> PyResult<u8> {
        Ok(Self::resolve(self.snapshot.load(), order_tuple(scope)?)?.0)
    }

    /// Denials counted so far.
    #[getter]
    fn denials(&self) -> u64 {
        self.denials.total()
    }

    /// Restricted scopes in the current snapshot.
    fn __len__(&self) -> usize {
        self.snapshot.load().len()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<OrderGate>()?;
    Ok(())
}
