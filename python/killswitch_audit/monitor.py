"""HdrHistogram latency monitor: per-operation histograms in Rust, analysis, alerts, exports.

    from killswitch_audit.monitor import LatencyMonitor, measure_kill_switch_latency

    monitor = LatencyMonitor()                  # or LatencyMonitor(load_config(path))
    with monitor.measure("trade_audit"):        # times the body in ns (monotonic clock)
        ...
    monitor.record("kill_switch_audit", 850)    # or record a latency you measured (ns)
    monitor.get_analysis("trade_audit")         # percentiles in µs, breaches, status
    monitor.write_hlog("latency.hlog")          # HdrHistogram interval log
    print(monitor.prometheus_text())

Recording (`record`, `measure`) is one call into Rust: an uncontended per-CPU lock, a histogram
increment and one compare for breach detection; it never allocates after an operation's first
use and never waits for alert delivery.

Alerts (latency breach, buffer pressure, regression; see `Alert`) are evaluated by a Rust thread
every 100 ms and delivered by another, which attaches to the interpreter only to hand the alert to
`_deliver`: it is logged on ``logging.getLogger("killswitch_audit.alerts")`` (WARNING) and passed
to each handler added with `add_alert_handler`. A handler that raises is logged and skipped; one
that blocks delays only later alerts (they queue, then are counted in `alerts_dropped`).

``performance_status`` of an analysis, against the config (all µs, p99.97 of the analysed range):

- ``BREACH`` when p99.97 is above ``performance.alerts.latency_breach_threshold``;
- ``DEGRADED`` when p99.97 is above the operation's target, or when any single record breached
  the threshold;
- ``OK`` otherwise (also when nothing was recorded).

The target of an operation is ``performance.target_latencies.<name>`` when the name is one of its
keys (``kill_switch_audit``, ``trade_audit``, ``emergency_stop``); for other kill-switch operations
(names starting with ``kill_switch`` or ``emergency_stop``) and for `get_kill_switch_analysis` it
is ``performance.alerts.regression_target_p99_97``; other operations have only the breach rule.
"""

from __future__ import annotations

import atexit
import functools
import logging
import sys
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union, cast

if TYPE_CHECKING:  # annotations only
    import http.server

    from .config import AuditConfig
    from .types import KillSwitchAnalysis, LatencyAnalysis, NativeAnalysis, PerformanceStatus

try:
    from . import _native
except ImportError:  # pragma: no cover - exercised only without the compiled extension
    _native = None  # type: ignore[assignment]

__all__ = [
    "KILL_SWITCH_PREFIXES",
    "Alert",
    "LatencyMonitor",
    "RingProbe",
    "get_global_latency_monitor",
    "is_kill_switch_operation",
    "measure_kill_switch_latency",
    "serve_metrics",
]

_SLOTS: dict[str, Any] = {"slots": True} if sys.version_info >= (3, 10) else {}

ALERT_LOGGER = logging.getLogger("killswitch_audit.alerts")
_log = logging.getLogger("killswitch_audit.monitor")

if _native is not None:
    # Before the interpreter finalizes, stop handing alerts to Python and let a hand-off in
    # progress finish (a thread attaching during finalization would abort the process).
    atexit.register(_native._monitor_shutdown, 1.0)

#: Operation names starting with one of these are kill-switch operations.
KILL_SWITCH_PREFIXES = ("kill_switch", "emergency_stop")

#: The native ring probe (`RingProbe().set(main_fill, emergency_fill, main_dropped,
#: emergency_dropped)`), for loggers the monitor cannot read directly.
RingProbe: Any = _native.RingProbe if _native is not None else None


def is_kill_switch_operation(name: str) -> bool:
    """True for names starting with ``kill_switch`` or ``emergency_stop``."""
    return name.startswith(KILL_SWITCH_PREFIXES)


@dataclass(frozen=True, **_SLOTS)
class Alert:
    """One alert.

    kind: ``"latency_breach"``, ``"buffer_pressure"`` or ``"regression"``.
    operation: the operation (breach), ``"kill_switch"`` (regression) or the ring name
    (``"main"``/``"emergency"``, buffer pressure).
    value_us / threshold_us: worst latency and threshold in µs; for ``buffer_pressure`` they are
    the ring's highest fill and the threshold as fractions of capacity (0..1).
    count: breach: records over the threshold since the previous alert of this operation;
    regression: kill-switch records in the window above the target; buffer pressure: checks
    that saw the ring over the threshold since the previous alert.

    Every (kind, subject) alerts at most once per ``performance.alerts.rate_limit_s``. A
    regression alerts when the rolling p99.97 crosses its target and repeats only while new
    kill-switch records keep it above (one slow stop does not alert for the whole window).
    """

    kind: str
    operation: str
    value_us: float
    threshold_us: float
    count: int
    message: str


def _deliver(
    handlers: list[Callable[[Alert], Any]],
    kind: str,
    operation: str,
    value: float,
    threshold: float,
    count: int,
    message: str,
) -> None:
    """Called by the native delivery thread (attached only for this call)."""
    alert = Alert(kind, operation, float(value), float(threshold), int(count), message)
    try:
        ALERT_LOGGER.warning("%s", message, extra={"alert": alert})
    except Exception:  # a broken logging handler must not stop the others
        pass
    for handler in list(handlers):
        try:
            handler(alert)
        except Exception:
            try:
                _log.exception("alert handler %r failed", handler)
            except Exception:
                pass


def _defaults() -> Any:
    try:
        from .config import default_config
    except ImportError:  # pragma: no cover
        return None
    return default_config()


class _Settings:
    """The `performance` values the monitor uses, with the schema's defaults."""

    __slots__ = (
        "breach_us",
        "buffer_pressure",
        "rate_limit_s",
        "regression_us",
        "targets",
        "window_s",
    )

    def __init__(self, config: Any) -> None:
        self.targets = {"kill_switch_audit": 1.0, "trade_audit": 1.0, "emergency_stop": 5.0}
        self.breach_us = 20.0
        self.regression_us = 10.0
        self.buffer_pressure = 0.8
        self.rate_limit_s = 1.0
        self.window_s = 60.0
        perf = getattr(config, "performance", None) if config is not None else None
        if perf is None:
            return
        tl = perf.target_latencies
        for k in self.targets:
            self.targets[k] = float(getattr(tl, k, self.targets[k]))
        al = perf.alerts
        self.breach_us = float(al.latency_breach_threshold)
        self.regression_us = float(al.regression_target_p99_97)
        self.buffer_pressure = float(al.buffer_pressure_threshold)
        self.rate_limit_s = float(al.rate_limit_s)
        self.window_s = float(perf.window_s)

    def target_for(self, operation: Optional[str]) -> Optional[float]:
        if operation is None:
            return self.regression_us
        if operation in self.targets:
            return self.targets[operation]
        if is_kill_switch_operation(operation):
            return self.regression_us
        return None


class LatencyMonitor:
    """Latency monitor over named operations (see the module doc).

    ``config``: an `AuditConfig` (only ``config.performance`` is read); None: the defaults of
    the config schema. ``tick_s``: how often alerts are evaluated.
    """

    __slots__ = (
        "__weakref__",
        "_handlers",
        "_native",
        "_poller",
        "_settings",
        "config",
        "measure",
        "record",
    )

    def __init__(self, config: Optional[AuditConfig] = None, *, tick_s: float = 0.1) -> None:
        if _native is None:
            from .errors import KillSwitchAuditError

            raise KillSwitchAuditError(
                "LatencyMonitor needs the compiled extension killswitch_audit._native"
            )
        self.config = config
        s = self._settings = _Settings(config)
        self._native = _native.LatencyMonitor(
            breach_threshold_us=s.breach_us,
            regression_target_us=s.regression_us,
            buffer_pressure_threshold=s.buffer_pressure,
            rate_limit_s=max(s.rate_limit_s, 1e-3),
            window_s=max(s.window_s, 1e-3),
            tick_s=tick_s,
        )
        self._handlers: list[Callable[[Alert], Any]] = []
        # The native side keeps the list, not `self`: no cycle through Rust.
        self._native.add_alert_handler(functools.partial(_deliver, self._handlers))
        self._poller: Optional[_StatsPoller] = None
        #: record(operation: str, latency_ns: int): the native method itself (no Python frame).
        self.record = self._native.record
        #: measure(operation: str): a native context manager timing its body in ns. In a hot
        #: loop, create it once (``t = monitor.measure("op")``, then ``with t:``) to skip the
        #: lookup and allocation; one object must not time two overlapping blocks (threads or
        #: interleaved coroutines) -- create one per block there.
        self.measure = self._native.measure

    # ------------------------------------------------------------------ analysis

    def _status(self, a: NativeAnalysis, target: Optional[float]) -> PerformanceStatus:
        if a["count"] == 0:
            return "OK"
        p = a["p99_97_latency_us"]
        if p > self._settings.breach_us:
            return "BREACH"
        if (target is not None and p > target) or a["breaches"] > 0:
            return "DEGRADED"
        return "OK"

    def get_analysis(self, operation: str, window: bool = False) -> LatencyAnalysis:
        """count, mean/pNN/max latencies in µs, breaches, performance_status (module doc), since
        start or (``window=True``) over the last ``performance.window_s`` seconds."""
        a = cast("LatencyAnalysis", self._native.get_analysis(operation, window))
        a["operation"] = operation
        a["window"] = window
        a["target_us"] = self._settings.target_for(operation)
        a["performance_status"] = self._status(a, a["target_us"])
        return a

    def get_kill_switch_analysis(self, window: bool = False) -> KillSwitchAnalysis:
        """`get_analysis` over every kill-switch operation merged, judged against
        ``regression_target_p99_97``."""
        a = cast("KillSwitchAnalysis", self._native.get_kill_switch_analysis(window))
        a["operation"] = "kill_switch"
        a["operations"] = [o for o in self._native.operations() if is_kill_switch_operation(o)]
        a["window"] = window
        a["target_us"] = self._settings.regression_us
        a["performance_status"] = self._status(a, a["target_us"])
        return a

    def operations(self) -> list[str]:
        """Names recorded so far, sorted."""
        return list(self._native.operations())

    # ------------------------------------------------------------------ exports

    def write_hlog(self, path: Union[str, Path], window: bool = False) -> Path:
        """Write an HdrHistogram interval log (V2 deflate, values in ns, one ``Tag=<operation>``
        line per operation since start, or its retained intervals with ``window=True``)."""
        p = Path(path)
        self._native.write_hlog(p, window)
        return p

    def prometheus_text(self) -> str:
        """Prometheus text exposition (summaries incl. quantile 0.9997, counts, breaches, ring
        fill and drops when a logger is attached)."""
        return str(self._native.prometheus_text())

    # ------------------------------------------------------------------ alerts, probes

    def add_alert_handler(self, handler: Callable[[Alert], Any]) -> None:
        """Call ``handler(alert)`` for every alert, on the monitor's delivery thread."""
        if not callable(handler):
            raise TypeError(f"alert handler must be callable, got {type(handler).__name__}")
        self._handlers.append(handler)

    def remove_alert_handler(self, handler: Callable[[Alert], Any]) -> None:
        """Stop calling ``handler``; ValueError if it was not added."""
        self._handlers.remove(handler)

    def attach_probe(self, probe: _native.RingProbe) -> None:
        """Watch the rings reported by a `RingProbe` (replaces any logger or probe)."""
        self._stop_poller()
        self._native.attach_probe(probe)

    def attach_logger(self, logger: Any) -> None:
        """Watch an audit logger's rings: buffer-pressure alerts and the ring gauges in
        `prometheus_text`. The native logger is read from Rust without the GIL; any other logger
        with ``get_stats()`` is polled by a daemon thread."""
        self._stop_poller()
        if isinstance(logger, _native.AuditLogger):
            self._native.attach_logger(logger)
            return
        if not callable(getattr(logger, "get_stats", None)):
            raise TypeError(
                f"attach_logger needs an AuditLogger or an object with get_stats(), "
                f"got {type(logger).__name__}"
            )
        probe = _native.RingProbe()
        self._native.attach_probe(probe)
        self._poller = _StatsPoller(logger, probe, 0.05)

    def _stop_poller(self) -> None:
        if self._poller is not None:
            self._poller.stop()
            self._poller = None

    def evaluate(self) -> None:
        """Evaluate alerts now (the background thread does it every ``tick_s``); delivery still
        happens on the delivery thread."""
        self._native.evaluate()

    def alerts_raised(self) -> dict[str, int]:
        """Alerts raised so far, by kind."""
        return dict(self._native.alerts_raised())

    @property
    def alerts_dropped(self) -> int:
        """Alerts lost because handlers were too slow to take them."""
        return int(self._native.alerts_dropped)

    def close(self, timeout: float = 5.0) -> bool:
        """Stop the background threads (recording keeps working; alerts stop), waiting at most
        ``timeout`` seconds; False if an alert handler is still blocked (its thread ends when
        the handler returns)."""
        self._stop_poller()
        return bool(self._native.close(timeout))

    def __enter__(self) -> LatencyMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LatencyMonitor operations={self.operations()!r}>"


class _StatsPoller:
    """Copies a Python logger's ring numbers into a native probe every `interval` seconds."""

    def __init__(self, logger: Any, probe: Any, interval: float) -> None:
        self._logger = weakref.ref(logger)
        self._probe = probe
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="ksa-monitor-stats-poller", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            logger = self._logger()
            if logger is None or getattr(logger, "closed", False):
                return
            try:
                st = logger.get_stats()
                self._probe.set(
                    float(st.get("main_ring_fill", 0.0)),
                    float(st.get("emergency_ring_fill", 0.0)),
                    int(st.get("dropped_main", 0)),
                    int(st.get("dropped_emergency", 0)),
                )
            except Exception:
                _log.debug("stats poll failed", exc_info=True)
            del logger

    def stop(self) -> None:
        self._stop.set()


# ---------------------------------------------------------------------- global monitor

_GLOBAL: Optional[LatencyMonitor] = None
_GLOBAL_LOCK = threading.Lock()


def get_global_latency_monitor() -> LatencyMonitor:
    """The process-wide monitor, created on first use from `load_config()` (which honours
    ``$KILLSWITCH_AUDIT_CONFIG``)."""
    global _GLOBAL
    m = _GLOBAL
    if m is not None:
        return m
    with _GLOBAL_LOCK:
        if _GLOBAL is None:
            try:
                from .config import load_config
            except ImportError:  # pragma: no cover
                cfg = None
            else:
                cfg = load_config()
            _GLOBAL = LatencyMonitor(cfg)
        return _GLOBAL


def _kill_switch_name(name: str) -> str:
    return name if is_kill_switch_operation(name) else f"kill_switch.{name}"


def measure_kill_switch_latency(name: str = "kill_switch") -> _native.Measure:
    """Context manager timing its body into the global monitor as a kill-switch operation: a
    ``name`` that does not start with ``kill_switch``/``emergency_stop`` is recorded as
    ``kill_switch.<name>``, so it always counts in `get_kill_switch_analysis` and the regression
    alert."""
    return get_global_latency_monitor().measure(_kill_switch_name(name))


def serve_metrics(
    port: int, addr: str = "0.0.0.0", monitor: Optional[LatencyMonitor] = None
) -> tuple[http.server.ThreadingHTTPServer, threading.Thread]:
    """Serves `prometheus_text()` of ``monitor`` (default: the global one) at ``/metrics`` over
    HTTP (stdlib `http.server`, one daemon thread): the text the Rust core renders goes out as
    it is, with the exposition format's content type; no third-party package, no re-parsing.
    ``port=0`` picks a free port. Returns ``(server, thread)`` like prometheus-client's
    ``start_http_server``; ``server.shutdown()`` stops it."""
    import http.server
    import threading

    mon = monitor if monitor is not None else get_global_latency_monitor()
    ref = weakref.ref(mon)

    class _Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            m = ref()
            if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                self.send_error(404, "only /metrics is served here")
                return
            body = (m.prometheus_text() if m is not None else "").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
            pass

    server = http.server.ThreadingHTTPServer((addr, port), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="ksa-metrics", daemon=True)
    thread.start()
    return server, thread
