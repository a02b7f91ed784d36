"""Latency monitor API: measure, status rule, windows, bad input, the global monitor, the report
CLI, clean exit and close, serving metrics, operation names, plots."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest
from killswitch_audit.monitor import (
    Alert,
    LatencyMonitor,
    get_global_latency_monitor,
    is_kill_switch_operation,
    measure_kill_switch_latency,
)
from killswitch_audit.report import read_hlog, report_main
from monitor_support import (
    HDR_RELATIVE_ERROR,
    make_monitor,
)


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
