"""Latency monitor alerts: breach, regression and buffer-pressure alerts (rate-limited, every
count carried), native rings exported, concurrent recording, failing or blocking handlers."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from killswitch_audit.config import AuditConfig
from killswitch_audit.monitor import (
    Alert,
    LatencyMonitor,
    RingProbe,
)
from monitor_support import (
    HDR_RELATIVE_ERROR,
    make_monitor,
)


def wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


class Collect:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []
        self.lock = threading.Lock()

    def __call__(self, alert: Alert) -> None:
        with self.lock:
            self.alerts.append(alert)

    def of(self, kind: str) -> list[Alert]:
        with self.lock:
            return [a for a in self.alerts if a.kind == kind]


def _stalled_logger_pressure(log: Any, pause: Callable[[bool], None]) -> None:
    """Stall the flusher, fill the main ring past 80 % and beyond, expect the alert."""
    m = make_monitor(buffer_pressure_threshold=0.8, rate_limit_s=3600)
    got = Collect()
    m.add_alert_handler(got)
    m.attach_logger(log)
    pause(True)
    try:
        for i in range(700):  # 700 / 1024: under the threshold
            log.audit_trade(symbol_id=1, quantity=i, price_cents=100)
        time.sleep(0.4)
        assert got.of("buffer_pressure") == []
        for i in range(1_200):  # past 80 %, then full: drops
            log.audit_trade(symbol_id=1, quantity=i, price_cents=100)
        assert wait_for(lambda: len(got.of("buffer_pressure")) == 1)
        a = got.of("buffer_pressure")[0]
        assert a.operation == "main"
        assert a.value_us > 0.8
        assert wait_for(
            lambda: 'killswitch_audit_ring_dropped_total{ring="main"} 0' not in m.prometheus_text()
        )
    finally:
        pause(False)
        m.close()
        log.close()


def test_breach_alert_fires_only_above_threshold_and_is_rate_limited() -> None:
    # Evaluations only when the test asks (tick and window step far away), so counts are exact.
    m = make_monitor(tick_s=3600, window_s=86_400, latency_breach_threshold=20.0, rate_limit_s=3600)
    got = Collect()
    m.add_alert_handler(got)
    for _ in range(100_000):
        m.record("trade_audit", 20_000)  # equal to the threshold: not a breach
    m.evaluate()
    time.sleep(0.3)
    assert got.alerts == []
    assert m.get_analysis("trade_audit")["breaches"] == 0

    for _ in range(100_000):
        m.record("trade_audit", 20_001)
    m.evaluate()
    assert wait_for(lambda: len(got.alerts) >= 1)
    for _ in range(10):
        m.record("trade_audit", 45_000)
    m.evaluate()
    time.sleep(0.3)  # the rate limit holds the next alert back
    assert len(got.alerts) == 1
    a = got.alerts[0]
    assert (a.kind, a.operation, a.count) == ("latency_breach", "trade_audit", 100_000)
    assert a.value_us == pytest.approx(20.001, rel=HDR_RELATIVE_ERROR)
    assert a.threshold_us == 20.0
    assert m.get_analysis("trade_audit")["breaches"] == 100_010
    m.close()


def test_100k_breaches_make_a_handful_of_alerts_carrying_every_count() -> None:
    m = make_monitor(rate_limit_s=0.25)
    got = Collect()
    m.add_alert_handler(got)
    start = time.monotonic()
    for i in range(100):
        for _ in range(1_000):
            m.record("kill_switch_audit", 100_000)
        if i % 10 == 0:
            time.sleep(0.07)
    elapsed = time.monotonic() - start
    assert wait_for(lambda: sum(a.count for a in got.of("latency_breach")) == 100_000)
    breach_alerts = got.of("latency_breach")
    # One immediately, then at most one per rate-limit period.
    assert 1 <= len(breach_alerts) <= int((elapsed + 1.0) / 0.25) + 2
    assert len(breach_alerts) < 20
    m.close()


def test_alerts_go_to_the_alerts_logger() -> None:
    records: list[logging.LogRecord] = []

    class H(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    h = H()
    lg = logging.getLogger("killswitch_audit.alerts")
    lg.addHandler(h)
    try:
        m = make_monitor()
        m.record("trade_audit", 1_000_000)
        assert wait_for(lambda: len(records) >= 1)
        assert records[0].levelno == logging.WARNING
        assert records[0].alert.kind == "latency_breach"  # type: ignore[attr-defined]
        assert "trade_audit" in records[0].getMessage()
        m.close()
    finally:
        lg.removeHandler(h)


def test_regression_alert_on_kill_switch_p99_97_only() -> None:
    m = make_monitor(regression_target_p99_97=10.0, latency_breach_threshold=1e6)
    got = Collect()
    m.add_alert_handler(got)
    for _ in range(2_000):
        m.record("kill_switch_audit", 1_000)
        m.record("trade_audit", 500_000)  # slow, but not a kill-switch operation
    m.evaluate()
    time.sleep(0.3)
    assert got.alerts == []
    for _ in range(10):
        m.record("emergency_stop", 15_000)
    assert wait_for(lambda: len(got.of("regression")) == 1)
    r = got.of("regression")[0]
    assert r.operation == "kill_switch"
    assert r.count == 10
    assert r.value_us == pytest.approx(15.0, rel=HDR_RELATIVE_ERROR)
    assert got.of("latency_breach") == []
    m.close()


def test_buffer_pressure_alert_from_a_probe() -> None:
    m = make_monitor(buffer_pressure_threshold=0.8, rate_limit_s=3600)
    got = Collect()
    m.add_alert_handler(got)
    probe = RingProbe()
    m.attach_probe(probe)
    probe.set(0.8, 0.2)  # at the threshold: fine
    time.sleep(0.3)
    assert got.alerts == []
    probe.set(0.93, 0.2, 12, 0)
    assert wait_for(lambda: len(got.alerts) == 1)
    a = got.alerts[0]
    assert (a.kind, a.operation) == ("buffer_pressure", "main")
    assert a.value_us == pytest.approx(0.93)
    assert "12" in a.message
    m.close()


def test_attach_native_audit_logger_exports_its_rings(tmp_path: Path) -> None:
    from killswitch_audit import NATIVE_AVAILABLE, open_audit_logger

    if not NATIVE_AVAILABLE:
        pytest.skip("native extension not built")
    log = open_audit_logger(directory=tmp_path / "audit")
    try:
        m = make_monitor()
        m.attach_logger(log)
        for i in range(10):
            log.audit_trade(symbol_id=1, quantity=i, price_cents=100)
        text = m.prometheus_text()
        assert 'killswitch_audit_ring_fill_ratio{ring="main"}' in text
        assert 'killswitch_audit_ring_dropped_total{ring="emergency"} 0' in text
        m.close()
    finally:
        log.close()


def test_buffer_pressure_alert_from_a_stalled_native_logger(tmp_path: Path) -> None:
    from killswitch_audit import NATIVE_AVAILABLE, open_audit_logger

    if not NATIVE_AVAILABLE:
        pytest.skip("native extension not built")
    cfg = AuditConfig.from_dict({"audit_system": {"buffer_size": 1024}})
    log = open_audit_logger(cfg, directory=tmp_path / "native")
    _stalled_logger_pressure(log, log._set_paused)


def test_eight_threads_recording_concurrently_lose_no_count() -> None:
    m = LatencyMonitor()
    n = 50_000
    barrier = threading.Barrier(9)
    stop = threading.Event()

    def worker(k: int) -> None:
        rec = m.record
        barrier.wait()
        for i in range(n):
            rec("shared", 100 + (i + k) % 5_000)
        for _ in range(1_000):
            with m.measure("shared"):
                pass

    def reader() -> None:
        barrier.wait()
        while not stop.is_set():
            m.get_analysis("shared")
            m.prometheus_text()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    r = threading.Thread(target=reader)
    for t in [*threads, r]:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    r.join()
    assert m.get_analysis("shared")["count"] == 8 * (n + 1_000)
    m.close()


def test_failing_or_blocking_alert_handler_changes_nothing() -> None:
    m = make_monitor(rate_limit_s=0.01)
    release = threading.Event()
    entered = threading.Event()
    got = Collect()

    def raising(alert: Alert) -> None:
        raise RuntimeError("handler bug")

    def blocking(alert: Alert) -> None:
        entered.set()
        release.wait(10)

    m.add_alert_handler(raising)
    m.add_alert_handler(got)
    m.add_alert_handler(blocking)
    m.record("trade_audit", 1_000_000)
    assert entered.wait(10)  # delivery is now stuck inside `blocking`
    assert len(got.alerts) == 1  # ... after `raising` failed and `got` still ran
    # Recording, analysis and exports are unaffected while a handler blocks.
    for _ in range(100_000):
        m.record("trade_audit", 50_000)
    a = m.get_analysis("trade_audit")
    assert a["count"] == 100_001
    assert a["breaches"] == 100_001
    assert "trade_audit" in m.prometheus_text()
    release.set()
    assert wait_for(lambda: sum(x.count for x in got.of("latency_breach")) == 100_001)
    assert m.alerts_dropped == 0
    m.close()
