"""The native audit engine end to end, read back from the files (issue 3)."""

from __future__ import annotations

import time

import pytest
from killswitch_audit import (
    AuditLogger,
    AuditLoggerClosed,
    KillSwitchReason,
    RecordKind,
    read_audit_log,
    verify_audit_log,
)
from killswitch_audit.reader import read_stats

pytestmark = pytest.mark.skipif(
    not __import__("killswitch_audit").NATIVE_AVAILABLE, reason="native extension not built"
)


def _audit_seqs(records):
    return [r.seq for r in records if not r.is_system]


def test_two_million_records_round_trip_through_both_rings(tmp_path):
    accepted = []
    with AuditLogger(tmp_path) as log:
        trade = log.audit_trade
        for i in range(2_000_000):
            if i % 2000 == 0:
                accepted.append(
                    log.audit_kill_switch(KillSwitchReason.DAILY_LOSS_LIMIT, i & 0xFFFF, i, -i)
                )
            accepted.append(trade(i & 0xFFFF, i, 10_000 + i, i))
        stats = log.get_stats()
    stored = [s for s in accepted if s >= 0]
    records = list(read_audit_log(tmp_path))
    seqs = _audit_seqs(records)
    assert sorted(seqs) == sorted(stored), "every accepted record is in the file, once"
    lost = sum(r.b for r in records if r.kind == RecordKind.GAP)
    assert lost == len(accepted) - len(stored) == stats["dropped_main"] + stats["dropped_emergency"]
    kill = [r for r in records if r.kind == RecordKind.KILL_SWITCH]
    assert len(kill) == 1000 and all(r.is_emergency for r in kill)
    assert all(r.code == KillSwitchReason.DAILY_LOSS_LIMIT and r.a == -r.b for r in kill)
    trades = {r.c: r for r in records if r.kind == RecordKind.TRADE}
    sample = trades.get(123_457)
    if sample is not None:
        assert (sample.symbol_id, sample.a, sample.b) == (123_457 & 0xFFFF, 123_457, 133_457)
    assert verify_audit_log(tmp_path).ok


def test_full_main_ring_drops_are_counted_and_gap_recorded_kill_switch_kept(tmp_path):
    with AuditLogger(tmp_path, buffer_size=1024, emergency_buffer_size=64) as log:
        log._set_paused(True)
        results = [log.audit_trade(1, i, 100, i) for i in range(5000)]
        ks = log.audit_kill_switch(KillSwitchReason.MANUAL, 1, 0, 0)
        assert ks >= 0, "a full main ring has no effect on the emergency ring"
        assert results.count(-1) == 5000 - 1024
        assert log.get_stats()["dropped_main"] == 5000 - 1024
        log._set_paused(False)
    records = list(read_audit_log(tmp_path))
    assert ks in _audit_seqs(records)
    gaps = [r for r in records if r.kind == RecordKind.GAP]
    assert sum(g.b for g in gaps) == 5000 - 1024
    assert all(g.code == 0 for g in gaps)
    report = verify_audit_log(tmp_path)
    assert report.ok, report.lines()
    assert report.gaps_accounted == 5000 - 1024


def test_close_drains_everything_and_later_calls_raise(tmp_path):
    log = AuditLogger(tmp_path, flush_interval_ms=1000)  # the interval alone would not flush
    seqs = [log.audit_trade(7, i, 1) for i in range(10_000)]
    log.close()
    assert log.closed
    with pytest.raises(AuditLoggerClosed):
        log.audit_trade(7, 1, 1)
    with pytest.raises(AuditLoggerClosed):
        log.audit_kill_switch(1, 1, 1, 1)
    log.close()  # idempotent
    assert set(seqs) <= set(_audit_seqs(read_audit_log(tmp_path)))


def test_flush_is_a_barrier(tmp_path):
    with AuditLogger(tmp_path, flush_interval_ms=10_000) as log:
        seq = log.audit_trade(1, 2, 3)
        assert log.flush(timeout=5.0)
        assert seq in _audit_seqs(read_audit_log(tmp_path))
        log._set_paused(True)
        late = log.audit_trade(1, 2, 3)
        assert not log.flush(timeout=0.05), "a stalled flusher makes flush time out"
        log._set_paused(False)
        assert log.flush(timeout=5.0, durable=True)
        assert late in _audit_seqs(read_audit_log(tmp_path))


def test_kill_switch_record_is_visible_without_flush_within_milliseconds(tmp_path):
    with AuditLogger(tmp_path, flush_interval_ms=10_000) as log:
        seq = log.audit_kill_switch(KillSwitchReason.POSITION_LIMIT, 5, 10, -20)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            if seq in _audit_seqs(read_audit_log(tmp_path)):
                break
            time.sleep(0.0005)
        else:
            pytest.fail("kill-switch record not in the file after 2 s")


def test_reopening_a_directory_continues_sequence_and_chain(tmp_path):
    with AuditLogger(tmp_path) as log:
        first = log.audit_trade(1, 1, 1)
    with AuditLogger(tmp_path) as log:
        second = log.audit_trade(1, 1, 1)
    assert second > first
    report = verify_audit_log(tmp_path)
    assert report.ok, report.lines()
    assert report.segments == 2


def test_stats_counters_and_stats_file(tmp_path):
    with AuditLogger(tmp_path) as log:
        for i in range(1000):
            log.audit_trade(1, i, 1)
        log.audit_kill_switch(1, 1, 1, 1)
        assert log.flush(timeout=5.0)
        stats = log.get_stats()
        for key in (
            "records_written",
            "records_flushed",
            "dropped_main",
            "dropped_emergency",
            "main_ring_fill",
            "emergency_ring_fill",
            "flushes",
            "bytes_written",
            "segments",
        ):
            assert key in stats
        assert stats["records_written"] == 1001
        assert stats["records_flushed"] >= 1001
        assert stats["segments"] == 1
        time.sleep(0.05)
        outside = read_stats(tmp_path)
        assert outside["records_written"] == 1001


def test_records_carry_utc_and_monotonic_time(tmp_path):
    before = time.time_ns()
    with AuditLogger(tmp_path) as log:
        log.audit_trade(1, 1, 1)
        time.sleep(0.002)
        log.audit_trade(1, 2, 1)
    after = time.time_ns()
    trades = [r for r in read_audit_log(tmp_path) if r.kind == RecordKind.TRADE]
    assert all(before - 1_000_000 <= r.wall_ns <= after + 1_000_000 for r in trades)
    assert trades[1].mono_ns - trades[0].mono_ns >= 1_500_000
    clock = [r for r in read_audit_log(tmp_path) if r.kind == RecordKind.CLOCK]
    assert clock, "the flusher records the clock's synchronisation state"


@pytest.mark.parametrize(
    "call, exc",
    [
        (lambda log: log.audit_kill_switch("x", 1, 1, 1), TypeError),
        (lambda log: log.audit_kill_switch(1.5, 1, 1, 1), TypeError),
        (lambda log: log.audit_kill_switch(70_000, 1, 1, 1), OverflowError),
        (lambda log: log.audit_kill_switch(1, -1, 1, 1), OverflowError),
        (lambda log: log.audit_trade(1, 2**63, 1), OverflowError),
        (lambda log: log.audit_trade(1, 1, 1, -5), OverflowError),
        (lambda log: log.audit(0), ValueError),
        (lambda log: log.audit(64), ValueError),
        (lambda log: log.flush(timeout=-1), ValueError),
    ],
)
def test_bad_arguments_raise_typed_errors_and_record_nothing(tmp_path, call, exc):
    with AuditLogger(tmp_path) as log:
        with pytest.raises(exc):
            call(log)
        assert log.get_stats()["records_written"] == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"buffer_size": 1000},
        {"buffer_size": 0},
        {"emergency_buffer_size": 3},
        {"flush_interval_ms": 0},
        {"segment_size_mb": 0},
        {"overflow_policy": "block"},
    ],
)
def test_bad_constructor_arguments_raise_value_error_naming_them(tmp_path, kwargs):
    with pytest.raises(ValueError) as info:
        AuditLogger(tmp_path, **kwargs)
    name, value = next(iter(kwargs.items()))
    assert name in str(info.value) or str(value) in str(info.value)


def _rss_anon_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise RuntimeError("no RssAnon in /proc/self/status")


@pytest.mark.slow
def test_memory_is_fixed_after_start_over_ten_million_records(tmp_path):
    with AuditLogger(tmp_path, segment_size_mb=16) as log:
        trade = log.audit_trade
        for i in range(200_000):  # warm up: rings touched, first segments rolled
            trade(1, i, 1, i)
        assert log.flush(timeout=10)
        before = _rss_anon_kib()
        for i in range(10_000_000):
            trade(1, i, 1, i)
        assert log.flush(timeout=30)
        after = _rss_anon_kib()
        stats = log.get_stats()
    assert stats["records_written"] + stats["dropped_main"] == 10_200_000
    assert stats["segments"] > 10, "rolled over many segments"
    # Anonymous memory (heap, rings) must not grow with the record count; file pages of the
    # mapped segments are not anonymous. 8 MiB of slack covers allocator noise.
    assert after - before < 8 * 1024, f"RssAnon grew by {after - before} KiB over 10M records"


@pytest.mark.parametrize("first_engine", ["rings", "direct"])
def test_a_directory_has_one_writer_across_engines(tmp_path, first_engine):
    from killswitch_audit import KillSwitchAuditError

    first = AuditLogger(tmp_path, engine=first_engine)
    for second in ("rings", "direct"):
        with pytest.raises(KillSwitchAuditError, match="another audit logger holds"):
            AuditLogger(tmp_path, engine=second)
    first.close()
    AuditLogger(tmp_path).close()  # close released the lock


@pytest.mark.parametrize("engine", ["rings", "direct"])
def test_kill_switch_kind_always_goes_through_the_emergency_ring(tmp_path, engine):
    with AuditLogger(tmp_path, buffer_size=1024, engine=engine) as log:
        seq = log.audit(RecordKind.KILL_SWITCH, code=4)
        for bad in (0, 64, 67, 255):
            with pytest.raises(ValueError):
                log.audit(bad)
    (rec,) = [r for r in read_audit_log(tmp_path) if r.seq == seq]
    assert rec.is_emergency


def test_prometheus_exports_ring_and_sink_counters_of_an_attached_logger(tmp_path):
    from killswitch_audit import LatencyMonitor
    from prometheus_client.parser import text_string_to_metric_families

    monitor = LatencyMonitor()
    with AuditLogger(tmp_path, buffer_size=1024) as log:
        monitor.attach_logger(log)
        log._set_paused(True)
        for i in range(1500):
            log.audit_trade(1, i, 1)
        samples = {
            (s.name, s.labels.get("ring", "")): s.value
            for family in text_string_to_metric_families(monitor.prometheus_text())
            for s in family.samples
        }
        log._set_paused(False)
        stats = log.get_stats()
    monitor.close()
    assert samples[("killswitch_audit_ring_dropped_total", "main")] == 1500 - 1024
    assert samples[("killswitch_audit_ring_fill_ratio", "main")] == 1.0
    assert samples[("killswitch_audit_sink_errors_total", "")] == stats["sink_errors"] == 0


def test_an_unknown_engine_is_named(tmp_path):
    with pytest.raises(ValueError, match='engine must be one of rings, direct, got "python"'):
        AuditLogger(tmp_path, engine="python")
    assert not list(tmp_path.glob("*.seg")), "a refused open leaves no segment"


def test_the_direct_engine_reports_itself_and_no_rings(tmp_path):
    with AuditLogger(tmp_path, engine="direct") as log:
        assert log.engine == "direct"
        seq = log.audit_trade(1, 2, 3, 4)
        st = log.get_stats()
        assert st["engine"] == "direct" and st["records_written"] == 1
        assert st["main_ring_capacity"] == 0 and st["main_ring_fill"] == 0.0
        # committed before the call returned: readable now, without a flush
        assert seq in {r.seq for r in read_audit_log(tmp_path)}
    with AuditLogger(tmp_path) as log:
        assert log.engine == "rings" and log.get_stats()["engine"] == "rings"
