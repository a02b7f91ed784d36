"""Latency monitor: precision, exports read by other tools, alerts, concurrency, report CLI."""

from __future__ import annotations

import logging
import math
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
    get_global_latency_monitor,
    is_kill_switch_operation,
    measure_kill_switch_latency,
)
from killswitch_audit.report import decode_histogram, read_hlog, report_main

np = pytest.importorskip("numpy")

HDR_RELATIVE_ERROR = 1e-3  # 3 significant digits: a bucket is at most 1/1024 of its value wide


def make_monitor(tick_s: float = 0.01, **perf: Any) -> LatencyMonitor:
    alerts = {
        k: perf.pop(k)
        for k in list(perf)
        if k
        in (
            "latency_breach_threshold",
            "regression_target_p99_97",
            "buffer_pressure_threshold",
            "rate_limit_s",
        )
    }
    cfg = AuditConfig.from_dict({"performance": {"alerts": alerts, **perf}})
    return LatencyMonitor(cfg, tick_s=tick_s)


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


@pytest.fixture
def lognormal_ns() -> Any:
    rng = np.random.default_rng(20260101)
    return np.maximum(rng.lognormal(mean=np.log(2_000), sigma=0.9, size=1_000_000), 1).astype(
        np.int64
    )


def test_percentiles_of_a_million_lognormal_values_match_numpy(lognormal_ns: Any) -> None:
    m = LatencyMonitor()
    rec = m.record
    for v in lognormal_ns.tolist():
        rec("lognormal", v)
    a = m.get_analysis("lognormal")
    assert a["count"] == 1_000_000
    # The sum is exact, so the mean is too.
    assert a["mean_latency_us"] == pytest.approx(lognormal_ns.mean() / 1e3, rel=1e-12)
    for key, q in [
        ("p50_latency_us", 50),
        ("p90_latency_us", 90),
        ("p99_latency_us", 99),
        ("p99_9_latency_us", 99.9),
        ("p99_97_latency_us", 99.97),
        ("p99_99_latency_us", 99.99),
        ("max_latency_us", 100),
    ]:
        exact = float(np.percentile(lognormal_ns, q, method="inverted_cdf")) / 1e3
        assert abs(a[key] - exact) <= exact * HDR_RELATIVE_ERROR + 1e-3, (key, a[key], exact)
    m.close()


def test_hlog_round_trip_through_hdrhistogram_package(tmp_path: Path, lognormal_ns: Any) -> None:
    hdrh_log = pytest.importorskip("hdrh.log")
    from hdrh.histogram import HdrHistogram

    m = LatencyMonitor()
    sample = lognormal_ns[:200_000].tolist()
    for v in sample:
        m.record("kill_switch_audit", v)
    for v in sample[:5_000]:
        m.record("trade_audit", v * 3)
    path = m.write_hlog(tmp_path / "lat.hlog")

    reader = hdrh_log.HistogramLogReader(str(path), HdrHistogram(1, 60_000_000_000, 3))
    decoded = {}
    while True:
        h = reader.get_next_interval_histogram()
        if h is None:
            break
        decoded[h.get_tag()] = h
    reader.close()
    assert set(decoded) == {"kill_switch_audit", "trade_audit"}
    assert decoded["kill_switch_audit"].get_total_count() == 200_000
    assert decoded["trade_audit"].get_total_count() == 5_000

    ours = read_hlog(path)
    for op in ("kill_switch_audit", "trade_audit"):
        a = m.get_analysis(op)
        for key, p in [
            ("p50_latency_us", 50),
            ("p99_latency_us", 99),
            ("p99_97_latency_us", 99.97),
        ]:
            theirs = decoded[op].get_value_at_percentile(p) / 1e3
            assert abs(theirs - a[key]) <= a[key] * HDR_RELATIVE_ERROR * 2, (op, p)
            # The report's pure-Python decoder reads the same numbers as the monitor.
            assert ours[op].value_at_percentile(p) / 1e3 == pytest.approx(a[key], rel=1e-9)
        assert ours[op].total == a["count"]
    m.close()


def test_window_hlog_has_the_retained_intervals(tmp_path: Path) -> None:
    m = make_monitor(window_s=3.0)  # 250 ms steps
    m.record("op", 1_000)
    time.sleep(0.4)
    m.record("op", 2_000)
    path = m.write_hlog(tmp_path / "w.hlog", window=True)
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("Tag=op,")]
    assert len(lines) >= 2
    assert sum(decode_histogram(ln.split(",", 4)[4]).total for ln in lines) == 2
    m.close()


def test_prometheus_text_parses_with_prometheus_client() -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    m = make_monitor(latency_breach_threshold=20.0)
    for i in range(1, 1001):
        m.record("kill_switch_audit", i * 10)  # 10 ns .. 10 µs
    for _ in range(3):
        m.record("trade_audit", 50_000)
    probe = RingProbe()
    probe.set(0.25, 0.5, 7, 0)
    m.attach_probe(probe)
    fams = {f.name: f for f in parser.text_string_to_metric_families(m.prometheus_text())}

    lat = fams["killswitch_audit_latency_seconds"]
    assert lat.type == "summary"
    samples = {
        (s.name, s.labels.get("operation"), s.labels.get("quantile")): s.value for s in lat.samples
    }
    assert samples[("killswitch_audit_latency_seconds_count", "kill_switch_audit", None)] == 1000
    assert samples[("killswitch_audit_latency_seconds_sum", "kill_switch_audit", None)] == (
        pytest.approx(sum(i * 10 for i in range(1, 1001)) / 1e9)
    )
    p9997 = samples[("killswitch_audit_latency_seconds", "kill_switch_audit", "0.9997")]
    assert p9997 == pytest.approx(10e-6, rel=HDR_RELATIVE_ERROR)
    breaches = {
        s.labels["operation"]: s.value
        for s in fams["killswitch_audit_latency_breaches"].samples
        if s.name.endswith("_total")
    }
    assert breaches == {"kill_switch_audit": 0, "trade_audit": 3}
    fill = {s.labels["ring"]: s.value for s in fams["killswitch_audit_ring_fill_ratio"].samples}
    assert fill == {"main": 0.25, "emergency": 0.5}
    dropped = {
        s.labels["ring"]: s.value
        for s in fams["killswitch_audit_ring_dropped"].samples
        if s.name.endswith("_total")
    }
    assert dropped == {"main": 7, "emergency": 0}
    m.close()


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


def test_measure_times_its_body_and_records_on_exception() -> None:
    m = LatencyMonitor()
    with m.measure("sleep") as t:
        time.sleep(0.005)
    assert t.elapsed_ns >= 5_000_000
    with pytest.raises(ValueError, match="boom"):
        with m.measure("sleep"):
            raise ValueError("boom")
    a = m.get_analysis("sleep")
    assert a["count"] == 2
    assert a["max_latency_us"] >= 5_000 * (1 - HDR_RELATIVE_ERROR)
    m.close()


def test_performance_status_rule() -> None:
    m = make_monitor(latency_breach_threshold=20.0)
    assert m.get_analysis("nothing")["performance_status"] == "OK"
    assert m.get_analysis("nothing")["count"] == 0
    for _ in range(10_000):
        m.record("trade_audit", 800)  # target 1 µs
    assert m.get_analysis("trade_audit")["performance_status"] == "OK"
    m.record("trade_audit", 25_000)  # one breach: below p99.97, still degrades
    assert m.get_analysis("trade_audit")["performance_status"] == "DEGRADED"
    for _ in range(10_000):
        m.record("emergency_stop", 7_000)  # over its 5 µs target, under the breach threshold
    assert m.get_analysis("emergency_stop")["performance_status"] == "DEGRADED"
    for _ in range(100):
        m.record("emergency_stop", 30_000)  # 1 % of calls breach: p99.97 over 20 µs
    assert m.get_analysis("emergency_stop")["performance_status"] == "BREACH"
    ks = m.get_kill_switch_analysis()
    assert ks["count"] == 10_100
    assert ks["operations"] == ["emergency_stop"]
    assert ks["performance_status"] == "BREACH"
    m.close()


def test_window_analysis_forgets_old_records() -> None:
    m = make_monitor(window_s=0.3)
    m.record("op", 1_000)
    time.sleep(1.0)
    m.record("op", 2_000)
    assert m.get_analysis("op", window=True)["count"] == 1
    assert m.get_analysis("op")["count"] == 2
    m.close()


def test_bad_input_raises_clear_errors() -> None:
    m = LatencyMonitor()
    with pytest.raises(OverflowError):
        m.record("op", -1)
    with pytest.raises(TypeError):
        m.record(1, 2)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        m.add_alert_handler("not callable")  # type: ignore[arg-type]
    with pytest.raises(OSError, match="no_such_dir"):
        m.write_hlog("/no_such_dir/x.hlog")
    assert m.get_analysis("op")["count"] == 0
    m.close()


def test_global_monitor_and_measure_kill_switch_latency() -> None:
    g = get_global_latency_monitor()
    assert g is get_global_latency_monitor()
    before = g.get_kill_switch_analysis()["count"]
    with measure_kill_switch_latency("flatten"):
        pass
    with measure_kill_switch_latency("emergency_stop"):
        pass
    assert g.get_kill_switch_analysis()["count"] == before + 2
    assert "kill_switch.flatten" in g.operations()
    assert is_kill_switch_operation("kill_switch.flatten")


def test_report_cli_on_a_real_hlog(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = LatencyMonitor()
    for i in range(1, 10_001):
        m.record("kill_switch_audit", i * 3)
    m.record("trade_audit", 1_500)
    path = m.write_hlog(tmp_path / "run.hlog")
    a = m.get_analysis("kill_switch_audit")

    assert report_main([str(path)]) == 0
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if ln.startswith("kill_switch_audit"))
    cells = row.split()
    assert int(cells[1]) == 10_000
    assert float(cells[7]) == pytest.approx(a["p99_97_latency_us"], abs=1e-3)  # p99.97 column
    assert float(cells[-1]) == pytest.approx(a["max_latency_us"], abs=1e-3)
    assert "trade_audit" in out

    pytest.importorskip("matplotlib")
    png = tmp_path / "p.png"
    assert report_main([str(path), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    bad = tmp_path / "bad.hlog"
    bad.write_text("Tag=x,0.0,1.0,1.0,HISTFAAAAnotbase64!!\n")
    assert report_main([str(bad)]) == 1
    assert "line 1" in capsys.readouterr().err
    assert report_main([]) == 2
    m.close()


def test_interpreter_exit_while_alerts_are_delivered_is_clean(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = tmp_path / "exit.py"
    script.write_text(
        "import sys, time\n"
        "from killswitch_audit.monitor import LatencyMonitor\n"
        "m = LatencyMonitor(tick_s=0.001)\n"
        "m.add_alert_handler(lambda a: time.sleep(0.02))\n"
        "for i in range(20000):\n"
        "    m.record('x', 10**6)\n"
        "time.sleep(float(sys.argv[1]))\n"
    )
    for delay in ("0", "0.002", "0.01", "0.03"):
        r = subprocess.run(
            [sys.executable, str(script), delay], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0, (delay, r.returncode, r.stderr[-2000:])


def test_serve_metrics_serves_the_exposition() -> None:
    import urllib.request

    from killswitch_audit.monitor import serve_metrics

    m = LatencyMonitor()
    m.record("kill_switch_audit", 1_234)
    server, thread = serve_metrics(0, addr="127.0.0.1", monitor=m)
    try:
        port = server.server_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            ctype = resp.headers["Content-Type"]
            text = resp.read().decode()
        assert text == m.prometheus_text()  # served as the core renders it
        assert ctype.startswith("text/plain; version=0.0.4")
        assert 'operation="kill_switch_audit"' in text and 'quantile="0.9997"' in text
        # and a real Prometheus parser reads it
        parser = pytest.importorskip("prometheus_client.parser")
        fams = {f.name: f for f in parser.text_string_to_metric_families(text)}
        assert any(s.value == 1 for f in fams.values() for s in f.samples if "count" in s.name)
    finally:
        server.shutdown()
        thread.join(10)
        m.close()


def test_any_values_count_and_quantiles_within_precision() -> None:
    hyp = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")

    m = LatencyMonitor()
    seen = [0]

    @hyp.settings(max_examples=60, deadline=None)
    @hyp.given(st.lists(st.integers(0, 59_000_000_000), min_size=1, max_size=300))
    def check(values: list[int]) -> None:
        seen[0] += 1
        op = f"prop{seen[0]}"
        for v in values:
            m.record(op, v)
        a = m.get_analysis(op)
        assert a["count"] == len(values)
        assert a["sum_latency_us"] == pytest.approx(sum(values) / 1e3)
        ordered = sorted(values)
        for key, q in [("p50_latency_us", 0.5), ("p99_latency_us", 0.99)]:
            exact = ordered[max(1, math.ceil(q * len(values))) - 1] / 1e3
            assert abs(a[key] - exact) <= exact * HDR_RELATIVE_ERROR + 1e-3, (key, a[key], exact)
        assert a["max_latency_us"] >= ordered[-1] / 1e3

    check()
    m.close()


def test_close_does_not_hang_on_a_blocked_alert_handler() -> None:
    m = make_monitor()
    release = threading.Event()
    entered = threading.Event()

    def blocking(alert: Alert) -> None:
        entered.set()
        release.wait(30)

    m.add_alert_handler(blocking)
    m.record("trade_audit", 1_000_000)
    assert entered.wait(10)
    t0 = time.monotonic()
    assert m.close(timeout=0.1) is False
    assert time.monotonic() - t0 < 5
    m.record("trade_audit", 1_000)  # recording still works after close
    assert m.get_analysis("trade_audit")["count"] == 2
    release.set()


# ------------------------------------------------------------- created at start (issue 13)


def test_the_stops_operations_exist_from_the_start_but_are_listed_once_recorded() -> None:
    """emergency_stop and kill_switch_audit are created with the monitor (the first stop must
    not allocate ~1 MB of histograms), yet listings and exports show only what was used."""
    m = make_monitor()
    assert m.operations() == []
    assert "emergency_stop" not in m.prometheus_text()
    assert m.get_analysis("emergency_stop")["count"] == 0
    assert m.get_kill_switch_analysis()["operations"] == []
    m.record("emergency_stop", 4_000)
    assert m.operations() == ["emergency_stop"]
    assert m.get_analysis("emergency_stop")["count"] == 1
    assert m.get_kill_switch_analysis()["operations"] == ["emergency_stop"]
    m.close()


def test_new_operation_names_keep_working_past_the_pool() -> None:
    """The first use of a new name takes a pre-built histogram set from a small pool; past
    the pool, names are still created (the slow way) and record exactly."""
    m = make_monitor()
    names = [f"op{i}" for i in range(12)]
    for i, name in enumerate(names):
        for _ in range(i + 1):
            m.record(name, 1_000 * (i + 1))
    assert m.operations() == sorted(names)
    for i, name in enumerate(names):
        a = m.get_analysis(name)
        assert a["count"] == i + 1
        assert a["max_latency_us"] == pytest.approx(i + 1, rel=HDR_RELATIVE_ERROR)
    m.close()


# --------------------------------------------------------------- report (issue 17 point 5)


def test_report_on_a_binary_file_names_the_file(tmp_path, capsys) -> None:
    f = tmp_path / "latency.hlog.gz"
    f.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)))
    assert report_main([str(f)]) == 1
    err = capsys.readouterr().err
    assert str(f) in err and "not an HdrHistogram interval log" in err
    assert "codec" not in err


def test_plot_shows_single_samples_and_colours_targets_like_their_series(tmp_path) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from killswitch_audit.report import distribution, draw_percentiles

    m = make_monitor()
    m.record("emergency_stop", 4_000)
    m.record("kill_switch_audit", 900)
    hists = read_hlog(m.write_hlog(tmp_path / "one.hlog"))
    m.close()
    series = {name: distribution(h) for name, h in hists.items()}
    targets = {
        "kill_switch_audit target": 1.0,
        "emergency_stop target": 5.0,
        "breach threshold": 20.0,
    }
    fig, ax = plt.subplots()
    try:
        draw_percentiles(ax, series, targets)
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        for name in ("emergency_stop", "kill_switch_audit"):
            assert lines[name].get_marker() == "o", "one sample must be visible as a marker"
            target = lines[f"{name} target ({targets[f'{name} target']:g} µs)"]
            assert target.get_color() == lines[name].get_color()
        shared = lines["breach threshold (20 µs)"].get_color()
        assert shared not in {lines[n].get_color() for n in ("emergency_stop", "kill_switch_audit")}
    finally:
        plt.close(fig)
    out = tmp_path / "one.png"
    assert report_main([str(tmp_path / "one.hlog"), "--plot", str(out)]) == 0
    assert out.stat().st_size > 0
