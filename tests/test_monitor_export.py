"""Latency monitor: precision against numpy, and the exports other tools read (HdrHistogram
logs, the Prometheus text)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from killswitch_audit.monitor import (
    LatencyMonitor,
    RingProbe,
)
from killswitch_audit.report import decode_histogram, read_hlog
from monitor_support import (
    HDR_RELATIVE_ERROR,
    make_monitor,
)

np = pytest.importorskip("numpy")


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
