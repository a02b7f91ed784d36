"""An engine that idles (issue 13): the flusher parks when there is nothing to do, a kill-switch
record wakes it, busy polling stays available. Counts, never timings (those are in
tests/latency/test_idle_latency.py and BENCHMARKS.md)."""

from __future__ import annotations

import os
import time

import pytest

native = pytest.importorskip("killswitch_audit._native", reason="native extension not built")

from killswitch_audit import read_audit_log  # noqa: E402
from killswitch_audit.config import AuditConfig, ConfigError  # noqa: E402
from killswitch_audit.format import RecordKind  # noqa: E402


def _flusher_switches() -> int:
    """Times this process's flusher thread was scheduled in (its schedstat timeslices)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() != "ksa-flusher":
                    continue
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                return int(f.read().split()[2])
        except OSError:
            continue
    raise AssertionError("no ksa-flusher thread")


@pytest.fixture
def logger(tmp_path):
    lg = native.AuditLogger(tmp_path / "log", segment_size_mb=1)
    lg.flush(5.0)
    yield lg
    lg.close()


def test_an_idle_flusher_parks_instead_of_polling(logger):
    """Polling every 50 µs is ~10,000 wakeups in 0.5 s; parked, the flusher wakes a few dozen
    times (its longest park is 50 ms)."""
    time.sleep(0.2)  # past the back-off's short parks
    parks0, switches0 = logger.get_stats()["flusher_parks"], _flusher_switches()
    time.sleep(0.5)
    parks = logger.get_stats()["flusher_parks"] - parks0
    switches = _flusher_switches() - switches0
    assert 1 <= parks < 200, parks
    assert switches < 400, f"the flusher ran {switches} times in 0.5 s of quiet"


def test_a_kill_switch_record_after_quiet_wakes_the_parked_flusher(logger, tmp_path):
    time.sleep(0.5)
    wakes0 = logger.get_stats()["flusher_wakes"]
    seq = logger.audit_kill_switch(3, 7, 100, -5)
    deadline = time.monotonic() + 10  # a generous bound, not a latency claim
    while logger.get_stats()["records_flushed"] == 0 or not logger.flush(0.0):
        assert time.monotonic() < deadline, "the kill-switch record never reached the file"
        time.sleep(0.001)
    assert logger.get_stats()["flusher_wakes"] > wakes0, "the record did not wake the flusher"
    assert logger.flush(5.0)
    ks = [r for r in read_audit_log(tmp_path / "log") if r.kind == RecordKind.KILL_SWITCH]
    assert [r.seq for r in ks] == [seq]


def test_a_record_after_quiet_is_in_the_file_after_flush(logger, tmp_path):
    time.sleep(0.5)
    seq = logger.audit_kill_switch(3, 7, 100, -5)
    trade = logger.audit_trade(7, 1, 10_000, 1)
    assert logger.flush(5.0)
    seqs = {r.seq for r in read_audit_log(tmp_path / "log")}
    assert {seq, trade} <= seqs


def test_busy_poll_still_works_and_never_parks(tmp_path):
    lg = native.AuditLogger(tmp_path / "log", segment_size_mb=1, idle_strategy="busy_poll")
    try:
        seq = lg.audit_kill_switch(3, 7, 100, -5)
        assert lg.flush(5.0)
        time.sleep(0.2)
        assert lg.get_stats()["flusher_parks"] == 0
    finally:
        lg.close()
    assert seq in {r.seq for r in read_audit_log(tmp_path / "log")}


def test_idle_strategy_is_validated_by_name(tmp_path):
    with pytest.raises(ValueError, match="idle_strategy"):
        native.AuditLogger(tmp_path / "log", idle_strategy="sleepy")
    with pytest.raises(ConfigError, match="idle_strategy"):
        AuditConfig.from_dict({"audit_system": {"idle_strategy": "sleepy"}})
    cfg = AuditConfig.from_dict({"audit_system": {"idle_strategy": "busy_poll"}})
    assert cfg.audit_system.idle_strategy == "busy_poll"


def test_the_cold_stop_benchmark_runs_its_fresh_processes(tmp_path):
    """The cold-stop rows spawn a child script of their own: it must keep importing what it
    imports (it once broke silently when the killswitch module became a package)."""
    from killswitch_audit.bench import cold_stop

    res = cold_stop(tmp_path, processes=2, idle_s=0.05, stagger_s=0.05)
    assert res["all_ok"] and res["processes"] == 2
    assert res["call_ns"]["p50_ns"] > 0 and res["block_ns"]["p50_ns"] > 0
