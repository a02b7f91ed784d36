"""The `killswitch-audit` command line, on real logs, through real subprocesses (exit codes,
stdout/stderr, no tracebacks)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from killswitch_audit import AuditLogger, RecordKind, default_config, read_audit_log
from killswitch_audit.format import HEADER_SIZE, RECORD_SIZE
from killswitch_audit.killswitch import KillSwitch, Scope

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def run(*args, timeout=120, check_clean=True):
    p = subprocess.run(
        [sys.executable, "-m", "killswitch_audit", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )
    if check_clean:
        assert "Traceback" not in p.stderr, p.stderr
    return p


@pytest.fixture
def log(tmp_path):
    """A closed log with 100 trades, a scoped kill-switch stop and its records."""
    d = tmp_path / "audit"
    lg = AuditLogger(d)
    for i in range(100):
        lg.audit_trade(7, 100 + i, 10_000, i)
    ks = KillSwitch(lg, latency_monitor=False, config=default_config())
    ks.add_stop_handler(lambda: None)
    ks.emergency_stop("daily_loss_limit", 7, 250, -99, scope=Scope(strategy="mm"))
    lg.close()
    return d


def count(d, kind=None):
    return sum(1 for r in read_audit_log(d) if kind is None or r.kind == kind)


# ------------------------------------------------------------------------------ help and usage


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["demo", "--help"],
        ["dump", "--help"],
        ["verify", "--help"],
        ["stats", "--help"],
        ["report", "--help"],
    ],
)
def test_every_command_has_help_and_exits_zero(argv):
    p = run(*argv)
    assert p.returncode == 0
    assert "usage:" in p.stdout


def test_no_command_is_a_usage_error():
    p = run()
    assert p.returncode == 2 and "usage:" in p.stderr


def test_unknown_option_is_a_usage_error_on_one_line():
    p = run("verify", "--frobnicate", "x")
    assert p.returncode == 2
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("killswitch-audit") and "error:" in last and "--frobnicate" in last


def test_missing_path_is_a_one_line_usage_error(tmp_path):
    for cmd in ("dump", "verify", "stats"):
        p = run(cmd, tmp_path / "nope")
        assert p.returncode == 2, cmd
        assert p.stderr.count("\n") == 1 and "no such file" in p.stderr


def test_bench_is_delegated_or_says_why_not_in_one_line():
    p = run("bench", "--help")
    try:
        import killswitch_audit.bench  # noqa: F401
    except Exception:
        assert p.returncode == 2
        assert p.stderr.count("\n") == 1 and "bench" in p.stderr
    else:
        assert p.returncode == 0


# ------------------------------------------------------------------------------ dump


def test_dump_json_prints_one_object_per_record_with_texts_joined(log):
    p = run("dump", log, "--format", "json")
    assert p.returncode == 0
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert len(rows) == count(log) - count(log, RecordKind.TEXT)
    assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
    ks = [r for r in rows if r["kind"] == "KILL_SWITCH"]
    assert len(ks) == 1 and ks[0]["code"] == 1 and ks[0]["b"] == -99 and ks[0]["emergency"]
    assert ks[0]["fields"] == {
        "reason": "DAILY_LOSS_LIMIT",
        "symbol": 7,
        "position": 250,
        "pnl_cents": -99,
        "scope": "strategy=mm",
    }
    assert any("scope:strategy=mm" in r["texts"] for r in rows)
    assert all(r["time"].endswith("Z") for r in rows)


def test_dump_raw_json_is_every_stored_record_in_file_order(log):
    p = run("dump", log, "--format", "json", "--raw")
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert len(rows) == count(log)
    assert [r["seq"] for r in rows] == [r.seq for r in read_audit_log(log)]
    assert any(r.get("text") == "scope:strategy=mm" for r in rows)


def test_dump_default_view_is_seq_ordered_with_named_fields(log):
    p = run("dump", log)
    assert p.returncode == 0
    lines = p.stdout.splitlines()
    seqs = [int(line.split()[0]) for line in lines[1:]]
    assert seqs == sorted(seqs)
    kill = next(line for line in lines if " KILL_SWITCH " in line)
    assert "reason=DAILY_LOSS_LIMIT" in kill and "scope=strategy=mm" in kill
    assert not any(" TEXT " in line for line in lines)  # texts joined onto their record


@pytest.mark.parametrize("name", ["plain", "gaps", "recovered"])
def test_dump_of_a_golden_log_is_the_golden_text(name):
    golden = Path(__file__).parent / "data" / "golden"
    p = run("dump", golden / name)
    assert p.returncode == 0 and p.stderr == ""
    assert p.stdout == (golden / f"{name}.dump.txt").read_text()


def test_dump_of_a_damaged_log_prints_one_error_line_and_no_header(log):
    seg = sorted(log.glob("*.seg"))[0]
    bad = HEADER_SIZE + 5 * RECORD_SIZE
    with open(seg, "r+b") as f:
        f.seek(bad + 33)
        f.write(b"\xff")
    p = run("dump", log)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and f"{seg}: offset {bad}" in p.stderr
    s = run("dump", log, "--salvage")
    assert s.returncode == 1 and "SALVAGED" in s.stdout and f"offset {bad}" in s.stderr


def test_dump_kind_filter_and_csv(log):
    p = run("dump", log, "--format", "csv", "--kind", "TRADE", "kill_switch")
    assert p.returncode == 0
    rows = list(csv.DictReader(io.StringIO(p.stdout)))
    assert {r["kind"] for r in rows} == {"TRADE", "KILL_SWITCH"}
    assert len(rows) == count(log, RecordKind.TRADE) + count(log, RecordKind.KILL_SWITCH) == 101


def test_dump_table_has_a_header_and_one_line_per_record(log):
    p = run("dump", log, "--kind", "STOP_STEP")
    assert p.returncode == 0
    lines = p.stdout.splitlines()
    assert "seq" in lines[0] and "kind" in lines[0]
    assert len(lines) - 1 == count(log, RecordKind.STOP_STEP) >= 3


def test_dump_unknown_kind_is_a_usage_error(log):
    p = run("dump", log, "--kind", "NOPE")
    assert p.returncode == 2 and "unknown record kind" in p.stderr


def test_dump_follow_prints_records_as_a_live_logger_writes_them(tmp_path):
    d = tmp_path / "live"
    lg = AuditLogger(d)
    try:
        lg.audit_trade(1, 1, 1, 1)
        assert lg.flush(5.0)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "killswitch_audit",
                "dump",
                str(d),
                "--follow",
                "--format",
                "jsonl",
                "--kind",
                "TRADE",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        try:
            first = json.loads(proc.stdout.readline())
            assert first["c"] == 1
            for oid in range(2, 6):
                lg.audit_trade(1, 1, 1, oid)
            assert lg.flush(5.0)
            seen = [json.loads(proc.stdout.readline())["c"] for _ in range(4)]
            assert seen == [2, 3, 4, 5]
        finally:
            proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0 and "Traceback" not in err
    finally:
        lg.close()


# ------------------------------------------------------------------------------ verify


def test_verify_a_clean_log_exits_zero(log):
    p = run("verify", log)
    assert p.returncode == 0 and "OK" in p.stdout.splitlines()[0]
    p = run("verify", log, "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["ok"] is True


def test_verify_a_flipped_byte_exits_one_and_names_the_offset(log):
    seg = sorted(log.glob("*.seg"))[0]
    off = HEADER_SIZE + 10 * RECORD_SIZE + 40  # inside record 10's `b`
    with open(seg, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0xFF]))
    p = run("verify", log)
    assert p.returncode == 1
    assert "CORRUPT" in p.stdout and str(HEADER_SIZE + 10 * RECORD_SIZE) in p.stdout
    rep = json.loads(run("verify", log, "--json").stdout)
    assert rep["ok"] is False and rep["corrupt"][0][1] == HEADER_SIZE + 10 * RECORD_SIZE


def test_verify_of_a_place_without_segments_fails(tmp_path):
    p = run("verify", tmp_path)
    assert p.returncode == 1 and "no audit log here" in p.stdout


def test_verify_rejects_a_key_that_is_not_hex(log):
    p = run("verify", log, "--key-hex", "zz")
    assert p.returncode == 2 and "hex" in p.stderr


# ------------------------------------------------------------------------------ stats


def test_stats_reads_a_running_loggers_counters_from_another_process(tmp_path):
    d = tmp_path / "running"
    lg = AuditLogger(d)
    try:
        for i in range(1000):
            lg.audit_trade(3, 1, 1, i)
        assert lg.flush(5.0)
        deadline = time.monotonic() + 10
        while True:  # stats.bin is rewritten on the flusher's passes
            p = run("stats", d, "--json")
            assert p.returncode == 0, p.stderr
            s = json.loads(p.stdout)
            if s["records_flushed"] >= 1000 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert s["pid"] == os.getpid() and s["writer_alive"] is True
        assert s["records_written"] >= 1000 and s["records_flushed"] >= 1000
        assert s["main_ring_capacity"] == 131072
        p = run("stats", d)
        assert p.returncode == 0 and "records_written" in p.stdout and "running" in p.stdout
    finally:
        lg.close()


def test_stats_of_a_directory_without_stats_file_fails_in_one_line(tmp_path):
    p = run("stats", tmp_path)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "stats.bin" in p.stderr


# ------------------------------------------------------------------------------ report


def test_report_prints_the_percentile_table_of_an_hlog(tmp_path):
    from killswitch_audit.monitor import LatencyMonitor

    mon = LatencyMonitor(default_config())
    try:
        for v in range(1000, 101_000, 100):
            mon.record("emergency_stop", v)
        path = tmp_path / "lat.hlog"
        mon.write_hlog(path)
    finally:
        mon.close()
    p = run("report", path)
    assert p.returncode == 0 and "emergency_stop" in p.stdout and "p99.97" in p.stdout
    p = run("report", tmp_path / "missing.hlog")
    assert p.returncode == 1 and p.stderr.count("\n") == 1


# ------------------------------------------------------------------------------ demo


def test_demo_runs_end_to_end_fires_the_kill_switch_and_leaves_a_clean_log(tmp_path):
    d = tmp_path / "demo"
    p = run(
        "demo",
        "--dir",
        d,
        "--seconds",
        "1",
        "--rate",
        "20000",
        "--stop-samples",
        "400",
        "--quiet",
        "--no-plot",
        timeout=180,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert "kill switch fired" in out and "DAILY_LOSS_LIMIT" in out
    for col in ("p50", "p99.97", "max"):
        assert col in out
    for op in ("audit_trade", "audit_kill_switch", "emergency_stop", "allows()"):
        assert op in out
    assert "records_written" in out and "OK" in out
    log_dir = d / "audit"
    recs = list(read_audit_log(log_dir))
    halts = [r for r in recs if r.kind == RecordKind.KILL_SWITCH]
    assert len(halts) == 1 and halts[0].code == 1 and halts[0].b <= -2_500_000
    assert sum(r.kind == RecordKind.TRADE for r in recs) > 1000
    assert run("verify", log_dir).returncode == 0
    assert (d / "latency.hlog").exists()
    assert run("report", d / "latency.hlog").returncode == 0


def test_demo_in_a_temporary_directory_removes_its_audit_logs_unless_kept(tmp_path):
    """Each logger fallocates a segment: a demo run used to leave ~193 MB in /tmp. Without
    --dir, the audit logs go at the end (the small report files stay); --keep keeps them."""
    args = ("demo", "--seconds", "0.3", "--rate", "5000", "--stop-samples", "100")
    env = dict(ENV, TMPDIR=str(tmp_path))
    for keep in (False, True):
        p = subprocess.run(
            [sys.executable, "-m", "killswitch_audit", *args, "--quiet", "--no-plot"]
            + (["--keep"] if keep else []),
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
        )
        assert p.returncode == 0, p.stdout + p.stderr
        (made,) = [d for d in tmp_path.glob("killswitch-audit-demo-*") if d.is_dir()]
        assert (made / "latency.hlog").exists()
        assert (made / "audit").exists() == keep, p.stdout
        assert ("removed the demo's audit logs" in p.stdout) != keep
        shutil.rmtree(made)


def test_demo_writes_a_percentile_plot_when_matplotlib_is_present(tmp_path):
    pytest.importorskip("matplotlib")
    d = tmp_path / "demo"
    png = tmp_path / "p.png"
    p = run(
        "demo",
        "--dir",
        d,
        "--seconds",
        "0.5",
        "--rate",
        "10000",
        "--stop-samples",
        "200",
        "--quiet",
        "--plot",
        png,
        timeout=180,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_refuses_a_directory_that_already_holds_a_log(log):
    for d in (log.parent, log):
        p = run("demo", "--dir", d, "--seconds", "0.1")
        assert p.returncode == 2 and "already holds an audit log" in p.stderr
