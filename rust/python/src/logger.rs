//! `AuditLogger` for Python: argument extraction and error mapping around `ksa_core::logger`.
//!
//! The audit methods take the GIL-attached fast path: PyO3 extracts the integers (TypeError /
//! OverflowError on bad input), the core appends, and the return value is a Python int.
//! Nothing here allocates, locks, makes a syscall or releases the GIL on that path.
use ksa_core::idle::IdleStrategy;
use ksa_core::logger::{
    AppendError, AuditError, Engine, Logger, LoggerConfig, OpenError, OverflowPolicy,
};
use pyo3::exceptions::{
    PyNotADirectoryError, PyOSError, PyOverflowError, PyPermissionError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

fn package_error(py: Python<'_>, name: &str, message: String) -> PyErr {
    match py
        .import("killswitch_audit.errors")
        .and_then(|m| m.getattr(name))
    {
        Ok(class) => match class.call1((message.clone(),)) {
            Ok(instance) => PyErr::from_value(instance),
            Err(e) => e,
        },
        Err(_) => PyValueError::new_err(message),
    }
}

#[cold]
fn append_error(py: Python<'_>, e: AppendError, logger: &Logger) -> PyResult<i64> {
    match e {
        AppendError::Dropped(_) => Ok(-1),
        AppendError::Closed => Err(package_error(
            py,
            "AuditLoggerClosed",
            closed_message(logger),
        )),
    }
}

fn closed_message(logger: &Logger) -> String {
    if logger.is_abandoned() {
        format!(
            "this audit logger belongs to process {} and was inherited through fork(); \
             the child must open its own AuditLogger (on another directory)",
            logger.owner_pid()
        )
    } else {
        "audit logger is closed".into()
    }
}

/// The native audit logger. See `killswitch_audit.AuditLogger` for the documentation.
#[pyclass(
    name = "AuditLogger",
    module = "killswitch_audit._native",
    frozen,
    weakref
)]
pub struct AuditLogger {
    inner: Arc<Logger>,
}

impl AuditLogger {
    /// The core logger, for other parts of the binding (the latency monitor's ring probe).
    pub(crate) fn core(&self) -> Arc<Logger> {
        Arc::clone(&self.inner)
    }

    /// AuditLoggerClosed once closed (or inherited through fork()).
    fn check_open(&self, py: Python<'_>) -> PyResult<()> {
        if self.inner.is_closed() {
            return Err(package_error(
                py,
                "AuditLoggerClosed",
                closed_message(&self.inner),
            ));
        }
        Ok(())
    }
}

/// A finite number > 0, or a ValueError naming the argument (shared by the bindings).
pub(crate) fn positive(name: &str, value: f64) -> PyResult<f64> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(PyValueError::new_err(format!(
            "{name} must be a positive finite number, got {value}"
        )))
    }
}

/// Longest finite wait accepted (~31 years); `None` waits without limit.
const MAX_WAIT_S: f64 = 1e9;

/// A duration in seconds from Python: ValueError naming the argument for NaN or a negative
/// value, OverflowError above [`MAX_WAIT_S`] (never a Rust panic, never an `Instant` overflow).
pub(crate) fn seconds(name: &str, value: f64) -> PyResult<Duration> {
    if value.is_nan() || value < 0.0 {
        return Err(PyValueError::new_err(format!(
            "{name} must be a number of seconds >= 0, got {value}"
        )));
    }
    if value > MAX_WAIT_S {
        return Err(PyOverflowError::new_err(format!(
            "{name} is too large: {value} seconds (at most {MAX_WAIT_S:e}; None waits without limit)"
        )));
    }
    Duration::try_from_secs_f64(value)
        .map_err(|_| PyOverflowError::new_err(format!("{name} is too large: {value} seconds")))
}

/// A permission mode for files or directories of the log (ValueError naming the argument).
fn mode(name: &str, value: i64) -> PyResult<u32> {
    match u32::try_from(value) {
        Ok(m) if m <= 0o777 && m & 0o002 == 0 => Ok(m),
        _ => Err(PyValueError::new_err(format!(
            "{name} must be a permission mode in 0o000..=0o777 without the world-write bit, \
             got {value:#o}"
        ))),
    }
}

fn non_negative(name: &str, value: i64) -> PyResult<u64> {
    u64::try_from(value)
        .map_err(|_| PyValueError::new_err(format!("{name} must not be negative, got {value}")))
}

#[pymethods]
impl AuditLogger {
    #[new]
    #[pyo3(signature = (directory, *, buffer_size=None, emergency_buffer_size=None,
        flush_interval_ms=None, segment_size_mb=None, emergency_poll_us=None,
        overflow_policy=None, spin_limit_us=None, durable_kill_switch=None, hmac_key=None,
        clock_check_interval_s=None, file_mode=None, dir_mode=None, idle_strategy=None,
        engine=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        directory: PathBuf,
        buffer_size: Option<i64>,
        emergency_buffer_size: Option<i64>,
        flush_interval_ms: Option<f64>,
        segment_size_mb: Option<i64>,
        emergency_poll_us: Option<i64>,
        overflow_policy: Option<&str>,
        spin_limit_us: Option<i64>,
        durable_kill_switch: Option<bool>,
        hmac_key: Option<Vec<u8>>,
        clock_check_interval_s: Option<f64>,
        file_mode: Option<i64>,
        dir_mode: Option<i64>,
        idle_strategy: Option<&str>,
        engine: Option<&str>,
    ) -> PyResult<Self> {
        // Defaults and limits are the core's (ksa_core::logger::settings); None = default.
        use ksa_core::logger::settings as s;
        let int = |setting: s::IntSetting, v: Option<i64>| -> PyResult<u64> {
            // i64 so that a negative value is a ValueError naming the key (an unsigned
            // extraction would raise a nameless OverflowError)
            let v = v.map_or(Ok(setting.default), |v| non_negative(setting.key, v))?;
            setting.check(v).map_err(PyValueError::new_err)
        };
        let number = |setting: s::NumberSetting, v: Option<f64>| -> PyResult<f64> {
            setting
                .check(v.unwrap_or(setting.default))
                .map_err(PyValueError::new_err)
        };
        let choice = |setting: s::ChoiceSetting, v: Option<&str>| -> PyResult<usize> {
            setting
                .check(v.unwrap_or(setting.default()))
                .map_err(PyValueError::new_err)
        };
        let spin_limit = Duration::from_micros(int(s::SPIN_LIMIT_US, spin_limit_us)?);
        let overflow = match choice(s::OVERFLOW_POLICY, overflow_policy)? {
            0 => OverflowPolicy::Drop,
            _ => OverflowPolicy::Spin(spin_limit),
        };
        let idle_strategy = match choice(s::IDLE_STRATEGY, idle_strategy)? {
            0 => IdleStrategy::Backoff,
            _ => IdleStrategy::BusyPoll,
        };
        let engine = match choice(s::ENGINE, engine)? {
            0 => Engine::Rings,
            _ => Engine::Direct,
        };
        if hmac_key.as_ref().is_some_and(|k| k.is_empty()) {
            return Err(PyValueError::new_err("hmac_key must not be empty"));
        }
        let flush_interval_ms = number(s::FLUSH_INTERVAL_MS, flush_interval_ms)?;
        let clock_check_interval_s = number(s::CLOCK_CHECK_INTERVAL_S, clock_check_interval_s)?;
        let config = LoggerConfig {
            directory,
            main_capacity: int(s::BUFFER_SIZE, buffer_size)? as usize,
            emergency_capacity: int(s::EMERGENCY_BUFFER_SIZE, emergency_buffer_size)? as usize,
            flush_interval: seconds("flush_interval_ms", flush_interval_ms / 1e3)?,
            emergency_poll: Duration::from_micros(int(s::EMERGENCY_POLL_US, emergency_poll_us)?),
            segment_bytes: int(s::SEGMENT_SIZE_MB, segment_size_mb)? << 20,
            overflow,
            durable_kill_switch: durable_kill_switch.unwrap_or(s::DURABLE_KILL_SWITCH),
            hmac_key,
            clock_check_interval: seconds("clock_check_interval_s", clock_check_interval_s)?,
            file_mode: file_mode.map_or(Ok(s::FILE_MODE), |m| mode("file_mode", m))?,
            dir_mode: dir_mode.map_or(Ok(s::DIR_MODE), |m| mode("dir_mode", m))?,
            idle_strategy,
            engine,
        };
        let logger = py.detach(|| Logger::open(config)).map_err(|e| match e {
            OpenError::Config(why) => PyValueError::new_err(why),
            OpenError::Io(path, err) => PyOSError::new_err(format!("{}: {err}", path.display())),
            e @ OpenError::Locked(_) => package_error(py, "KillSwitchAuditError", e.to_string()),
            OpenError::Refused(why) => PyPermissionError::new_err(why),
            OpenError::NotADirectory(why) => PyNotADirectoryError::new_err(why),
            OpenError::Key(why) => package_error(py, "ConfigError", why),
        })?;
        let inner = Arc::new(logger);
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|w| w.strong_count() > 0);
            live.push(Arc::downgrade(&inner));
        }
        Ok(AuditLogger { inner })
    }

    /// Audits a kill-switch trigger through the emergency ring. Returns the sequence number,
    /// or -1 when the emergency ring was full (counted, GAP-recorded).
    fn audit_kill_switch(
        &self,
        py: Python<'_>,
        reason_code: u16,
        symbol_id: u32,
        position_size: i64,
        pnl_cents: i64,
    ) -> PyResult<i64> {
        match self
            .inner
            .audit_kill_switch(reason_code, symbol_id, position_size, pnl_cents)
        {
            Ok(seq) => Ok(seq as i64),
            Err(e) => append_error(py, e, &self.inner),
        }
    }

    /// Audits a trade through the main ring. Returns the sequence number or -1 when dropped.
    #[pyo3(signature = (symbol_id, quantity, price_cents, order_id=0))]
    fn audit_trade(
        &self,
        py: Python<'_>,
        symbol_id: u32,
        quantity: i64,
        price_cents: i64,
        order_id: u64,
    ) -> PyResult<i64> {
        match self
            .inner
            .audit_trade(symbol_id, quantity, price_cents, order_id)
        {
            Ok(seq) => Ok(seq as i64),
            Err(e) => append_error(py, e, &self.inner),
        }
    }

    /// Audits a record of any application kind (see `RecordKind`).
    #[pyo3(signature = (kind, code=0, symbol_id=0, a=0, b=0, c=0, emergency=false))]
    #[allow(clippy::too_many_arguments)]
    fn audit(
        &self,
        py: Python<'_>,
        kind: u8,
        code: u16,
        symbol_id: u32,
        a: i64,
        b: i64,
        c: u64,
        emergency: bool,
    ) -> PyResult<i64> {
        match self.inner.audit(kind, code, symbol_id, a, b, c, emergency) {
            Ok(seq) => Ok(seq as i64),
            Err(AuditError::Append(e)) => append_error(py, e, &self.inner),
            Err(AuditError::NotApplicationKind(k)) => Err(PyValueError::new_err(format!(
                "kind {k} is not an application record kind (1..=63)"
            ))),
        }
    }

    /// Waits (GIL released) until every record audited before the call is in the file;
    /// `durable=True` also waits for fdatasync, `chained=True` for the chain head in the
    /// segment header to cover them. Returns False on timeout.
    #[pyo3(signature = (timeout=None, durable=false, chained=false))]
    fn flush(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
        durable: bool,
        chained: bool,
    ) -> PyResult<bool> {
        self.check_open(py)?;
        let timeout = timeout.map(|t| seconds("timeout", t)).transpose()?;
        Ok(py.detach(|| self.inner.flush_with(timeout, durable, chained)))
    }

    /// Waits (GIL released) until every record audited through the emergency ring before the
    /// call is committed to the segment file (it survives kill -9 from then on), without
    /// waiting for the main ring. Returns False on timeout (e.g. a full disk).
    #[pyo3(signature = (timeout=None))]
    fn flush_emergency(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        self.check_open(py)?;
        let timeout = timeout.map(|t| seconds("timeout", t)).transpose()?;
        Ok(py.detach(|| self.inner.flush_emergency(timeout)))
    }

    /// Drains everything into the file, seals the segment and stops the flusher (GIL released).
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.inner.close());
    }

    /// For the child of a fork(): marks this logger closed without touching the parent's files.
    fn _abandon(&self) {
        self.inner.abandon();
    }

    /// Test hook: pause (True) or resume (False) the flusher, simulating a stalled sink.
    fn _set_paused(&self, paused: bool) {
        self.inner.set_paused(paused);
    }

    /// True once closed.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// "rings" (the default engine) or "direct" (each call writes its record itself).
    #[getter]
    fn engine(&self) -> &'static str {
        match self.inner.engine() {
            Engine::Rings => "rings",
            Engine::Direct => "direct",
        }
    }

    /// The log directory.
    #[getter]
    fn directory(&self) -> PathBuf {
        self.inner.directory().to_path_buf()
    }

    /// What the logger found when it opened an existing directory.
    #[getter]
    fn recovery_notes(&self) -> Vec<String> {
        self.inner.recovery_notes().to_vec()
    }

    /// Counters (see README): records_written, records_flushed, dropped_main, ...
    fn get_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let d = PyDict::new(py);
        d.set_item("records_written", s.records_written)?;
        d.set_item("records_flushed", s.records_flushed)?;
        d.set_item("dropped_main", s.dropped_main)?;
        d.set_item("dropped_emergency", s.dropped_emergency)?;
        d.set_item("main_ring_len", s.main_ring_len)?;
        d.set_item("main_ring_capacity", s.main_ring_capacity)?;
        // The direct engine has no rings (capacity 0): its fill is 0.
        let fill = |len: u64, cap: u64| {
            if cap == 0 {
                0.0
            } else {
                len as f64 / cap as f64
            }
        };
        d.set_item(
            "main_ring_fill",
            fill(s.main_ring_len, s.main_ring_capacity),
        )?;
        d.set_item("emergency_ring_len", s.emergency_ring_len)?;
        d.set_item("emergency_ring_capacity", s.emergency_ring_capacity)?;
        d.set_item(
            "emergency_ring_fill",
            fill(s.emergency_ring_len, s.emergency_ring_capacity),
        )?;
        d.set_item("flushes", s.flushes)?;
        d.set_item("bytes_written", s.bytes_written)?;
        d.set_item("segments", s.segments)?;
        d.set_item("sink_errors", s.sink_errors)?;
        d.set_item("durable_syncs", s.durable_syncs)?;
        d.set_item("seq_unreserved", s.seq_unreserved)?;
        d.set_item("last_seq", s.last_seq)?;
        d.set_item("clock_state", s.clock_state)?;
        d.set_item("flusher_parks", s.flusher_parks)?;
        d.set_item("flusher_wakes", s.flusher_wakes)?;
        d.set_item("engine", self.engine())?;
        Ok(d)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close(py);
        false
    }
}

/// Every logger of this process, so that interpreter exit and fork() can reach them.
static LIVE: Mutex<Vec<Weak<Logger>>> = Mutex::new(Vec::new());

fn live_loggers() -> Vec<Arc<Logger>> {
    LIVE.lock()
        .map(|l| l.iter().filter_map(Weak::upgrade).collect())
        .unwrap_or_default()
}

/// Closes (drains) every open logger: registered with `atexit` and the SIGTERM handler.
#[pyfunction]
fn _close_all(py: Python<'_>) {
    let loggers = live_loggers();
    py.detach(|| loggers.iter().for_each(|l| l.close()));
}

/// In the child of a fork(): every inherited logger is closed without draining (the flusher
/// thread does not exist there and the segment files belong to the parent).
#[pyfunction]
fn _after_fork_in_child() {
    // The parent's lock state is copied by fork; a poisoned or held lock must not hang the child.
    if let Ok(live) = LIVE.try_lock() {
        live.iter()
            .filter_map(Weak::upgrade)
            .for_each(|l| l.abandon());
    }
}

/// The floor for benchmarks: an empty PyO3 call with `audit_kill_switch`'s four arguments.
#[pyfunction]
fn noop_audit(reason_code: u16, symbol_id: u32, position_size: i64, pnl_cents: i64) -> i64 {
    std::hint::black_box((reason_code, symbol_id, position_size, pnl_cents));
    0
}

/// CRC-32C of `data` (the record checksum).
#[pyfunction]
fn crc32c(data: &[u8]) -> u32 {
    ksa_core::crc::crc32c(data)
}

/// Index of the first 64-byte record of `data` whose CRC is wrong, or -1 when all are right.
#[pyfunction]
fn crc32c_check(data: &[u8]) -> i64 {
    for (i, rec) in data.chunks_exact(ksa_core::record::RECORD_SIZE).enumerate() {
        let rec: &[u8; 64] = rec.try_into().expect("chunks_exact yields 64 bytes");
        if !ksa_core::record::Record::crc_ok(rec) {
            return i as i64;
        }
    }
    -1
}

/// The kernel's clock synchronisation state: (state, est_error_us, max_error_us, status_bits),
/// state 0 synchronised, 1 unsynchronised, 2 unknown.
#[pyfunction]
fn clock_sync_state() -> (u16, i64, i64, u64) {
    let c = ksa_core::logger::clock_sync_state();
    (c.state, c.est_error_us, c.max_error_us, c.status_bits)
}

/// `{key: {"default", "min", "max", "pow2"} | {"default", "max"} | {"default", "choices"}}`:
/// the core's defaults and limits of the logger settings, for the Python config to apply.
#[pyfunction]
fn logger_settings(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    use ksa_core::logger::settings as s;
    let out = PyDict::new(py);
    for i in s::INTS {
        let d = PyDict::new(py);
        d.set_item("default", i.default)?;
        d.set_item("min", i.min)?;
        d.set_item("max", i.max)?;
        d.set_item("pow2", i.pow2)?;
        out.set_item(i.key, d)?;
    }
    for n in s::NUMBERS {
        let d = PyDict::new(py);
        d.set_item("default", n.default)?;
        d.set_item("max", n.max)?;
        out.set_item(n.key, d)?;
    }
    for c in s::CHOICES {
        let d = PyDict::new(py);
        d.set_item("default", c.default())?;
        d.set_item("choices", c.choices.to_vec())?;
        out.set_item(c.key, d)?;
    }
    for (key, default) in [
        (
            "durable_kill_switch",
            s::DURABLE_KILL_SWITCH
                .into_pyobject(py)?
                .to_owned()
                .into_any(),
        ),
        ("file_mode", s::FILE_MODE.into_pyobject(py)?.into_any()),
        ("dir_mode", s::DIR_MODE.into_pyobject(py)?.into_any()),
    ] {
        let d = PyDict::new(py);
        d.set_item("default", default)?;
        out.set_item(key, d)?;
    }
    Ok(out)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<AuditLogger>()?;
    m.add_function(wrap_pyfunction!(logger_settings, m)?)?;
    m.add_function(wrap_pyfunction!(noop_audit, m)?)?;
    m.add_function(wrap_pyfunction!(crc32c, m)?)?;
    m.add_function(wrap_pyfunction!(crc32c_check, m)?)?;
    m.add_function(wrap_pyfunction!(clock_sync_state, m)?)?;
    m.add_function(wrap_pyfunction!(_close_all, m)?)?;
    m.add_function(wrap_pyfunction!(_after_fork_in_child, m)?)?;
    Ok(())
}
