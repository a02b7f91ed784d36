//! Binding of `ksa_core::monitor`: `LatencyMonitor`, its `measure()` context manager and
//! `RingProbe`. Argument checks and conversions only; the logic is in the core.
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ksa_core::monitor::{Analysis, ManualProbe, Monitor, MonitorConfig, Operation, QUANTILES};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::logger::positive;
use pyo3::types::PyDict;

/// Cleared by `_monitor_shutdown` (an `atexit` hook): from then on no alert is handed to Python.
static PY_ALERTS_OPEN: AtomicBool = AtomicBool::new(true);
/// Alert hand-offs to Python in progress.
static PY_ALERTS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Stops handing alerts to Python and waits (detached, at most `timeout_s`) for hand-offs in
/// progress. Registered with `atexit` by `killswitch_audit.monitor`: a Rust thread that
/// attaches to (or is attached to) an interpreter that is finalizing is terminated with a forced
/// unwind, which aborts the process.
#[pyfunction]
#[pyo3(signature = (timeout_s=1.0))]
fn _monitor_shutdown(py: Python<'_>, timeout_s: f64) -> bool {
    PY_ALERTS_OPEN.store(false, Ordering::SeqCst);
    let timeout = Duration::from_secs_f64(if timeout_s.is_finite() {
        timeout_s.clamp(0.0, 3600.0)
    } else {
        0.0
    });
    py.detach(move || {
        let deadline = Instant::now() + timeout;
        while PY_ALERTS_IN_FLIGHT.load(Ordering::SeqCst) != 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    })
}

/// Process-wide origin of the monotonic clock used by `measure()`.
fn clock_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

#[inline]
fn now_ns() -> u64 {
    // `Instant` is CLOCK_MONOTONIC on Linux; u64 ns covers 584 years of uptime.
    clock_origin().elapsed().as_nanos() as u64
}

fn seconds(name: &str, v: f64) -> PyResult<Duration> {
    let v = positive(name, v)?;
    if v > 1e7 {
        return Err(PyValueError::new_err(format!(
            "{name} must be at most 1e7 seconds, got {v}"
        )));
    }
    Ok(Duration::from_secs_f64(v))
}

fn us_to_ns(name: &str, v: f64) -> PyResult<u64> {
    let v = positive(name, v)?;
    if v > 3.6e9 {
        return Err(PyValueError::new_err(format!(
            "{name} must be at most one hour (3.6e9 us), got {v}"
        )));
    }
    Ok((v * 1e3).round() as u64)
}

/// The native latency monitor (use `killswitch_audit.monitor.LatencyMonitor`).
#[pyclass(frozen, module = "killswitch_audit._native", name = "LatencyMonitor")]
pub struct LatencyMonitor {
    inner: Arc<Monitor>,
}

/// `with monitor.measure("op"):` times its body in ns on the monotonic clock and records it
/// when the body exits (also when it raises). One object per `with`; reusing one from two
/// threads at once mixes their start times.
#[pyclass(
    frozen,
    freelist = 64,
    module = "killswitch_audit._native",
    name = "Measure"
)]
pub struct Measure {
    op: Arc<Operation>,
    start: AtomicU64,
    elapsed: AtomicU64,
}

#[pymethods]
impl Measure {
    fn __enter__<'py>(slf: &Bound<'py, Self>) -> Bound<'py, Self> {
        slf.get().start.store(now_ns(), Ordering::Relaxed);
        slf.clone()
    }

    fn __exit__(
        &self,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> bool {
        let ns = now_ns().saturating_sub(self.start.load(Ordering::Relaxed));
        self.op.record(ns);
        self.elapsed.store(ns, Ordering::Relaxed);
        false
    }

    /// Nanoseconds the last `with` block took (0 before it exits).
    #[getter]
    fn elapsed_ns(&self) -> u64 {
        self.elapsed.load(Ordering::Relaxed)
    }

    /// The operation this measures.
    #[getter]
    fn operation(&self) -> &str {
        self.op.name()
    }
}

/// Ring fill and drop numbers pushed by hand (e.g. by another writer or a test) and
/// read by the monitor's evaluator thread without the GIL.
#[pyclass(frozen, module = "killswitch_audit._native", name = "RingProbe")]
pub struct RingProbe {
    inner: Arc<ManualProbe>,
}

#[pymethods]
impl RingProbe {
    #[new]
    fn new() -> Self {
        RingProbe {
            inner: Arc::new(ManualProbe::new()),
        }
    }

    /// Sets the fills (fractions 0..1) and drop counters of the main and emergency rings.
    #[pyo3(signature = (main_fill, emergency_fill=0.0, main_dropped=0, emergency_dropped=0))]
    fn set(&self, main_fill: f64, emergency_fill: f64, main_dropped: u64, emergency_dropped: u64) {
        self.inner.set(
            [main_fill, emergency_fill],
            [main_dropped, emergency_dropped],
        );
    }
}

fn analysis_dict<'py>(py: Python<'py>, a: &Analysis) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let us = |ns: u64| ns as f64 / 1e3;
    d.set_item("count", a.count)?;
    d.set_item("mean_latency_us", a.mean_ns / 1e3)?;
    d.set_item("min_latency_us", us(a.min_ns))?;
    const KEYS: [&str; QUANTILES.len()] = [
        "p50_latency_us",
        "p90_latency_us",
        "p99_latency_us",
        "p99_9_latency_us",
        "p99_97_latency_us",
        "p99_99_latency_us",
    ];
    for (k, v) in KEYS.iter().zip(a.quantiles_ns.iter()) {
        d.set_item(*k, us(*v))?;
    }
    d.set_item("max_latency_us", us(a.max_ns))?;
    d.set_item("sum_latency_us", us(a.sum_ns))?;
    d.set_item("breaches", a.breaches)?;
    d.set_item("clamped", a.clamped)?;
    Ok(d)
}

#[pymethods]
impl LatencyMonitor {
    /// Thresholds in µs, times in seconds (see `ksa_core::monitor::MonitorConfig`).
    #[new]
    #[pyo3(signature = (
        breach_threshold_us=20.0,
        regression_target_us=10.0,
        buffer_pressure_threshold=0.8,
        rate_limit_s=1.0,
        window_s=60.0,
        tick_s=0.1,
    ))]
    fn new(
        breach_threshold_us: f64,
        regression_target_us: f64,
        buffer_pressure_threshold: f64,
        rate_limit_s: f64,
        window_s: f64,
        tick_s: f64,
    ) -> PyResult<Self> {
        if !(0.0..=1.0).contains(&buffer_pressure_threshold) {
            return Err(PyValueError::new_err(format!(
                "buffer_pressure_threshold must be a fraction in 0..1, got {buffer_pressure_threshold}"
            )));
        }
        let config = MonitorConfig {
            breach_threshold_ns: us_to_ns("breach_threshold_us", breach_threshold_us)?,
            regression_target_ns: us_to_ns("regression_target_us", regression_target_us)?,
            buffer_pressure_threshold,
            rate_limit: seconds("rate_limit_s", rate_limit_s)?,
            window: seconds("window_s", window_s)?,
            tick: seconds("tick_s", tick_s)?,
            ..MonitorConfig::default()
        };
        Ok(LatencyMonitor {
            inner: Arc::new(Monitor::new(config)),
        })
    }

    /// Records one latency (ns) for `operation`. Negative or non-int: OverflowError/TypeError.
    fn record(&self, operation: &str, latency_ns: u64) {
        self.inner.record(operation, latency_ns);
    }

    /// A context manager timing its body (see `Measure`).
    fn measure(&self, operation: &str) -> Measure {
        Measure {
            op: self.inner.operation(operation),
            start: AtomicU64::new(now_ns()),
            elapsed: AtomicU64::new(0),
        }
    }

    /// Analysis of `operation` (µs), since start or over the rolling window (all zero for an
    /// operation never recorded).
    #[pyo3(signature = (operation, window=false))]
    fn get_analysis<'py>(
        &self,
        py: Python<'py>,
        operation: &str,
        window: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let m = Arc::clone(&self.inner);
        let op = operation.to_owned();
        let a = py.detach(move || m.analysis(&op, window).unwrap_or_default());
        analysis_dict(py, &a)
    }

    /// Analysis over all kill-switch operations merged.
    #[pyo3(signature = (window=false))]
    fn get_kill_switch_analysis<'py>(
        &self,
        py: Python<'py>,
        window: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let m = Arc::clone(&self.inner);
        let a = py.detach(move || m.kill_switch_analysis(window));
        analysis_dict(py, &a)
    }

    /// Names of the operations recorded so far, sorted.
    fn operations(&self) -> Vec<String> {
        self.inner.operation_names()
    }

    /// Writes an HdrHistogram interval log (V2 deflate) to `path`.
    #[pyo3(signature = (path, window=false))]
    fn write_hlog(&self, py: Python<'_>, path: std::path::PathBuf, window: bool) -> PyResult<()> {
        let m = Arc::clone(&self.inner);
        let p = path.clone();
        py.detach(move || -> std::io::Result<()> {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&p)?);
            m.write_hlog(&mut f, window)?;
            std::io::Write::flush(&mut f)
        })
        .map_err(|e| PyOSError::new_err(format!("{}: {e}", path.display())))
    }

    /// Prometheus text exposition.
    fn prometheus_text(&self, py: Python<'_>) -> String {
        let m = Arc::clone(&self.inner);
        py.detach(move || m.prometheus_text())
    }

    /// Calls `callback(kind, operation, value, threshold, count, message)` for every alert, on
    /// the monitor's delivery thread, attached to the interpreter only for the call. An
    /// exception in it is reported as unraisable and changes nothing else.
    fn add_alert_handler(&self, callback: Bound<'_, PyAny>) -> PyResult<()> {
        if !callback.is_callable() {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "alert handler must be callable",
            ));
        }
        let cb: Py<PyAny> = callback.unbind();
        self.inner.add_alert_sink(Arc::new(move |a| {
            if !PY_ALERTS_OPEN.load(Ordering::Acquire) {
                return;
            }
            PY_ALERTS_IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
            // Re-check after announcing the hand-off: `_monitor_shutdown` either sees it in
            // flight and waits, or this sees the flag cleared.
            if !PY_ALERTS_OPEN.load(Ordering::SeqCst) {
                PY_ALERTS_IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
                return;
            }
            // try_attach: if the interpreter is gone anyway, the alert is dropped, not a hang.
            let _ = Python::try_attach(|py| {
                if let Err(e) = cb.call1(
                    py,
                    (
                        a.kind.as_str(),
                        a.operation.as_str(),
                        a.value,
                        a.threshold,
                        a.count,
                        a.message.as_str(),
                    ),
                ) {
                    e.write_unraisable(py, None);
                }
            });
            PY_ALERTS_IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        }));
        Ok(())
    }

    /// Watches the rings of `probe` (replacing any previous probe or logger).
    fn attach_probe(&self, probe: &Bound<'_, RingProbe>) {
        self.inner.attach_probe(probe.get().inner.clone());
    }

    /// Watches the rings of a native `AuditLogger` (replacing any previous probe or logger).
    /// The monitor reads the logger's atomics from its own thread, without the GIL.
    fn attach_logger(&self, logger: &Bound<'_, crate::logger::AuditLogger>) {
        self.inner.attach_probe(logger.get().core());
    }

    /// Stops watching any probe or logger.
    fn detach_probe(&self) {
        self.inner.detach_probe();
    }

    /// Runs one alert evaluation now (the background thread does this every tick).
    fn evaluate(&self, py: Python<'_>) {
        let m = Arc::clone(&self.inner);
        py.detach(move || m.evaluate());
    }

    /// Alerts raised so far by kind.
    fn alerts_raised<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let r = self.inner.alerts_raised();
        d.set_item("latency_breach", r[0])?;
        d.set_item("buffer_pressure", r[1])?;
        d.set_item("regression", r[2])?;
        Ok(d)
    }

    /// Alerts lost because delivery was too slow.
    #[getter]
    fn alerts_dropped(&self) -> u64 {
        self.inner.alerts_dropped()
    }

    /// Stops the background threads, waiting at most `timeout_s` (without holding the GIL)
    /// for them; returns whether they all ended (False: an alert handler is still blocked).
    #[pyo3(signature = (timeout_s=5.0))]
    fn close(&self, py: Python<'_>, timeout_s: f64) -> PyResult<bool> {
        let timeout = if timeout_s.is_finite() && timeout_s >= 0.0 {
            Duration::from_secs_f64(timeout_s.min(1e7))
        } else {
            return Err(PyValueError::new_err(format!(
                "timeout_s must be a non-negative finite number, got {timeout_s}"
            )));
        };
        let m = Arc::clone(&self.inner);
        py.detach(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.shutdown_timeout(timeout)))
                .map_err(|_| ())
        })
        .map_err(|()| PyRuntimeError::new_err("monitor shutdown failed"))
    }
}

/// Adds the monitor classes to `_native`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<LatencyMonitor>()?;
    m.add_class::<Measure>()?;
    m.add_class::<RingProbe>()?;
    m.add_function(wrap_pyfunction!(_monitor_shutdown, m)?)?;
    Ok(())
}
