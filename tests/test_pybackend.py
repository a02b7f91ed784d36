"""The pure-Python backend `PyAuditLogger`: same API and files as the native logger, read back
from disk; tampering with a real log is caught by `verify_audit_log`."""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from killswitch_audit.errors import AuditLoggerClosed, KillSwitchAuditError
from killswitch_audit.format import (
    HDR_OFF_CHAIN_HEAD,
    HDR_OFF_CHAIN_RECORDS,
    HDR_OFF_COMMITTED,
    HDR_OFF_PREV_CHAIN,
    HEADER_SIZE,
    RECORD_SIZE,
    ChainHasher,
    KillSwitchReason,
    RecordKind,
    Ring,
    crc32c,
    segment_name,
    unpack_header,
)
from killswitch_audit.pybackend import PyAuditLogger
from killswitch_audit.reader import (
    export_chain_head,
    read_audit_log,
    read_stats,
    verify_audit_log,
)

PYTHON_DIR = str(Path(__file__).resolve().parents[1] / "python")


def user_records(path):
    return [r for r in read_audit_log(path) if not r.is_system]


def run_child(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR, KILLSWITCH_AUDIT_NO_SIGTERM="1")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ------------------------------------------------------------------ round trips


def test_round_trip_through_both_rings_keeps_every_field(tmp_path):
    expected = {}
    with PyAuditLogger(tmp_path, segment_size_mb=1) as log:
        for i in range(50_000):
            if i % 500 == 0:
                seq = log.audit_kill_switch(KillSwitchReason.DRAWDOWN, i % 1000, -i, -2 * i)
                expected[seq] = (RecordKind.KILL_SWITCH, KillSwitchReason.DRAWDOWN, i % 1000, -i)
            seq = log.audit_trade(i % 997, i, 10_000 + i, order_id=2**64 - 1 - i)
            expected[seq] = (RecordKind.TRADE, 0, i % 997, i)
        seq = log.audit(RecordKind.STATE_CHANGE, code=2, a=0, b=1, c=5)
        expected[seq] = (RecordKind.STATE_CHANGE, 2, 0, 0)
        stats = log.get_stats()
    assert stats["dropped_main"] == stats["dropped_emergency"] == 0
    records = user_records(tmp_path)
    assert sorted(r.seq for r in records) == sorted(expected), "every seq exactly once"
    for r in records:
        kind, code, sym, a = expected[r.seq]
        assert (r.kind, r.code, r.symbol_id, r.a) == (kind, code, sym, a)
        assert r.is_emergency == (kind == RecordKind.KILL_SWITCH)
        if kind == RecordKind.TRADE:
            assert r.price_cents == 10_000 + r.quantity and r.order_id == 2**64 - 1 - r.quantity
        if kind == RecordKind.KILL_SWITCH:
            assert r.pnl_cents == 2 * r.position_size
        assert r.thread_id != 0 and r.wall_ns > 1_700_000_000 * 10**9
    report = verify_audit_log(tmp_path)
    assert report.ok, report.lines()
    assert report.segments >= 3, "segment_size_mb=1 rolls"
    assert [s["ended"] for s in report.sessions] == [True]
    stats = read_stats(tmp_path)
    assert stats["records_written"] == stats["records_flushed"] == len(expected)
    assert stats["dropped_main"] == 0 and stats["segments"] == report.segments


def test_close_drains_everything_and_writes_session_end(tmp_path):
    log = PyAuditLogger(tmp_path, flush_interval_ms=1000)  # the flusher would wait a second
    seqs = [log.audit_trade(1, i, 100) for i in range(100_000)]
    log.close()
    assert log.closed
    stored = [r.seq for r in read_audit_log(tmp_path, kinds=[RecordKind.TRADE])]
    assert stored == seqs
    end = list(read_audit_log(tmp_path, kinds=["SESSION_END"]))
    assert len(end) == 1 and end[0].a == 100_000 and end[0].is_system
    header = unpack_header((tmp_path / segment_name(0)).read_bytes()[:HEADER_SIZE])
    assert header.closed and header.chain_records == header.committed
    log.close()  # idempotent


def test_flush_is_a_barrier_and_wait_durable_returns(tmp_path):
    with PyAuditLogger(tmp_path, flush_interval_ms=10_000) as log:
        seq = log.audit_trade(5, 1, 2)
        assert log.flush(timeout=5)
        assert [r.seq for r in read_audit_log(tmp_path, kinds=["TRADE"])] == [seq]
        ks = log.audit_kill_switch(KillSwitchReason.MANUAL, 0, 0, 0)
        assert log.wait_durable(ks, timeout=5)
        assert log.flush(timeout=5, durable=True)
        assert log.get_stats()["durable_syncs"] >= 1


def test_bad_arguments_raise_clear_errors(tmp_path):
    with PyAuditLogger(tmp_path) as log:
        for bad in ("1", 1.0, None, True):
            with pytest.raises(TypeError):
                log.audit_trade(bad, 1, 1)
            with pytest.raises(TypeError):
                log.audit_kill_switch(bad, 1, 1, 1)
        with pytest.raises(OverflowError):
            log.audit_kill_switch(70_000, 1, 1, 1)  # u16 code
        with pytest.raises(OverflowError):
            log.audit_trade(2**32, 1, 1)  # u32 symbol
        with pytest.raises(OverflowError):
            log.audit_trade(-1, 1, 1)
        with pytest.raises(OverflowError):
            log.audit_trade(1, 2**63, 1)  # i64
        with pytest.raises(OverflowError):
            log.audit_trade(1, 1, -(2**63) - 1)
        with pytest.raises(OverflowError):
            log.audit_trade(1, 1, 1, order_id=2**64)  # u64
        with pytest.raises(OverflowError):
            log.audit(RecordKind.USER, c=-1)
        with pytest.raises(ValueError):
            log.audit(RecordKind.GAP)  # the flusher's own kind
        with pytest.raises(TypeError):
            log.audit(RecordKind.USER, emergency="yes")
        with pytest.raises(ValueError):
            log.flush(timeout=-1)
        assert log.audit_trade(2**32 - 1, -(2**63), 2**63 - 1, 2**64 - 1) >= 0
        assert log.get_stats()["records_written"] == 1, "rejected calls write nothing"
    with pytest.raises(AuditLoggerClosed):
        log.audit_trade(1, 1, 1)
    with pytest.raises(AuditLoggerClosed):
        log.audit_kill_switch(1, 1, 1, 1)
    with pytest.raises(AuditLoggerClosed):
        log.flush()
    for kwargs, exc in [
        ({"buffer_size": 1000}, ValueError),
        ({"buffer_size": 0}, ValueError),
        ({"buffer_size": "big"}, TypeError),
        ({"emergency_buffer_size": True}, TypeError),
        ({"flush_interval_ms": 0}, ValueError),
        ({"segment_size_mb": 0}, ValueError),
        ({"overflow_policy": "block"}, ValueError),
        ({"hmac_key": "not hex"}, ValueError),
    ]:
        with pytest.raises(exc):
            PyAuditLogger(tmp_path / "other", **kwargs)


def test_a_directory_has_one_writer(tmp_path):
    with PyAuditLogger(tmp_path):
        with pytest.raises(KillSwitchAuditError, match="another audit logger"):
            PyAuditLogger(tmp_path)


# ------------------------------------------------------------------ overflow


def test_full_main_ring_drops_counted_gap_recorded_kill_switch_unaffected(tmp_path):
    with PyAuditLogger(tmp_path, buffer_size=1024, emergency_buffer_size=64) as log:
        with log.flusher_paused():
            time.sleep(0.02)  # let a pass in progress finish
            results = [log.audit_trade(1, i, 100, i) for i in range(5000)]
            ks = log.audit_kill_switch(KillSwitchReason.MANUAL, 1, 0, 0)
            stats = log.get_stats()
        assert ks >= 0, "a full main ring has no effect on the emergency ring"
        dropped = [s for s in range(results[0], results[0] + 5000) if s not in set(results)]
        assert results.count(-1) == len(dropped) == 5000 - 1024 == stats["dropped_main"]
        assert stats["main_ring_fill"] == 1.0
        assert log.flush(timeout=5)
    gaps = list(read_audit_log(tmp_path, kinds=[RecordKind.GAP]))
    assert len(gaps) == 1 and gaps[0].code == Ring.MAIN and gaps[0].is_system
    assert (gaps[0].first_lost_seq, gaps[0].lost_count, gaps[0].last_lost_seq) == (
        dropped[0],
        len(dropped),
        dropped[-1],
    )
    report = verify_audit_log(tmp_path)
    assert report.ok, report.lines()
    assert report.gaps_accounted == len(dropped) and report.unaccounted_missing == []
    kills = list(read_audit_log(tmp_path, kinds=[RecordKind.KILL_SWITCH]))
    assert [k.seq for k in kills] == [ks]


def test_full_emergency_ring_is_counted_and_gap_recorded(tmp_path):
    with PyAuditLogger(tmp_path, emergency_buffer_size=64) as log:
        with log.flusher_paused():
            time.sleep(0.02)
            seqs = [log.audit_kill_switch(KillSwitchReason.OTHER, 0, 0, 0) for _ in range(100)]
        assert seqs.count(-1) == 36 and log.get_stats()["dropped_emergency"] == 36
    gaps = list(read_audit_log(tmp_path, kinds=[RecordKind.GAP]))
    assert [(g.code, g.lost_count) for g in gaps] == [(Ring.EMERGENCY, 36)]
    assert verify_audit_log(tmp_path).ok
    end = next(iter(read_audit_log(tmp_path, kinds=["SESSION_END"])))
    assert (end.b, end.c) == (0, 36)


# ------------------------------------------------------------------ sessions and crashes


def test_reopen_continues_seq_and_chain(tmp_path):
    with PyAuditLogger(tmp_path) as log:
        for i in range(1000):
            log.audit_trade(1, i, 1)
    last = max(r.seq for r in read_audit_log(tmp_path))
    first_final = ChainHasher(
        unpack_header((tmp_path / segment_name(0)).read_bytes()[:HEADER_SIZE]).prev_chain, 0
    )
    seg0 = (tmp_path / segment_name(0)).read_bytes()
    h0 = unpack_header(seg0[:HEADER_SIZE])
    first_final.update(seg0[HEADER_SIZE : HEADER_SIZE + h0.committed * RECORD_SIZE])
    with PyAuditLogger(tmp_path) as log:
        seq = log.audit_trade(2, 2, 2)
    start = list(read_audit_log(tmp_path, kinds=["SESSION_START"]))
    assert start[1].seq == last + 1 and start[1].b == last + 1
    assert seq > last + 1
    h1 = unpack_header((tmp_path / segment_name(1)).read_bytes()[:HEADER_SIZE])
    assert h1.prev_chain == first_final.digest() == h0.chain_head
    report = verify_audit_log(tmp_path)
    assert report.ok, report.lines()
    assert len(report.sessions) == 2 and all(s["ended"] for s in report.sessions)


def test_process_exit_without_close_drains_at_interpreter_exit(tmp_path):
    out = run_child(
        """
        import sys
        from killswitch_audit.pybackend import PyAuditLogger
        log = PyAuditLogger(sys.argv[1], flush_interval_ms=5000)
        for i in range(20000):
            log.audit_trade(1, i, 1)
        """,
        str(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    assert len(list(read_audit_log(tmp_path, kinds=["TRADE"]))) == 20_000
    assert verify_audit_log(tmp_path).ok


def test_crash_after_flush_keeps_flushed_records_and_next_session_chains_on(tmp_path):
    out = run_child(
        """
        import os, sys
        from killswitch_audit.pybackend import PyAuditLogger
        log = PyAuditLogger(sys.argv[1])
        for i in range(3000):
            log.audit_trade(1, i, 1)
        assert log.flush(5)
        os._exit(0)  # no close, no atexit: the segment stays open
        """,
        str(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    assert len(list(read_audit_log(tmp_path, kinds=["TRADE"]))) == 3000
    report = verify_audit_log(tmp_path)
    assert report.ok and any("not closed" in n for n in report.notes), report.lines()
    with PyAuditLogger(tmp_path) as log:
        assert any("not closed" in n for n in log.recovery_notes)
        log.audit_trade(9, 9, 9)
    report = verify_audit_log(tmp_path)
    assert report.ok, report.lines()
    assert any("never closed" in n for n in report.notes)
    assert [s["ended"] for s in report.sessions] == [False, True]


@pytest.mark.fault
def test_sigkill_while_writing_never_yields_invalid_records(tmp_path):
    for round_ in range(3):
        d = tmp_path / f"r{round_}"
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                textwrap.dedent(
                    """
                    import sys
                    from killswitch_audit.pybackend import PyAuditLogger
                    log = PyAuditLogger(sys.argv[1], segment_size_mb=1, flush_interval_ms=1)
                    i = 0
                    print("ready", flush=True)
                    while True:
                        log.audit_trade(1, i, 1)
                        i += 1
                    """
                ),
                str(d),
            ],
            env=dict(os.environ, PYTHONPATH=PYTHON_DIR, KILLSWITCH_AUDIT_NO_SIGTERM="1"),
            stdout=subprocess.PIPE,
        )
        assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
        time.sleep(0.2 + 0.1 * round_)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
        records = list(read_audit_log(d))  # never raises: a torn tail is skipped
        assert records and all(r.crc_ok for r in records)
        trades = [r.quantity for r in records if r.kind == RecordKind.TRADE]
        assert trades == list(range(len(trades))), "a prefix of what was audited, in order"
        report = verify_audit_log(d)
        assert report.corrupt == [] and report.chain_ok, report.lines()


def test_forked_child_gets_a_closed_logger_and_parent_carries_on(tmp_path):
    log = PyAuditLogger(tmp_path)
    log.audit_trade(1, 1, 1)
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            log.audit_trade(1, 2, 2)
            code = 1
        except AuditLoggerClosed as e:
            code = 0 if "fork" in str(e) else 2
        log.close()  # a no-op in the child: never touches the parent's files
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    log.audit_trade(1, 3, 3)
    log.close()
    assert [r.quantity for r in read_audit_log(tmp_path, kinds=["TRADE"])] == [1, 3]
    assert verify_audit_log(tmp_path).ok


# ------------------------------------------------------------------ tamper evidence


def _log_with_segments(path, n=40_000):
    with PyAuditLogger(path, segment_size_mb=1) as log:
        for i in range(n):
            log.audit_trade(i % 13, i, 100 + i, i)
            if i % 1000 == 0:
                log.audit_kill_switch(KillSwitchReason.MANUAL, 1, i, -i)
    assert verify_audit_log(path).ok
    return path / segment_name(0)


def _rewrite(seg: Path, edit) -> None:
    raw = bytearray(seg.read_bytes())
    edit(raw)
    seg.write_bytes(bytes(raw))


def _slot(i):
    return HEADER_SIZE + i * RECORD_SIZE


def _restamp(raw, i):
    o = _slot(i)
    struct.pack_into("<I", raw, o + 60, crc32c(bytes(raw[o : o + 60])))


def _counts(raw, delta_committed, delta_chain):
    for off, d in ((HDR_OFF_COMMITTED, delta_committed), (HDR_OFF_CHAIN_RECORDS, delta_chain)):
        struct.pack_into("<Q", raw, off, struct.unpack_from("<Q", raw, off)[0] + d)


def test_tamper_edit_with_fixed_crc_breaks_the_chain(tmp_path):
    seg = _log_with_segments(tmp_path)

    def edit(raw):
        struct.pack_into("<q", raw, _slot(100) + 40, 1)  # price of a trade
        _restamp(raw, 100)

    _rewrite(seg, edit)
    assert len(list(read_audit_log(tmp_path))) > 0, "the CRCs are fine; only the chain knows"
    report = verify_audit_log(tmp_path)
    assert not report.ok and not report.chain_ok
    assert report.chain_errors[0][:2] == (str(seg), HDR_OFF_CHAIN_HEAD)


def test_tamper_edit_without_crc_is_named_exactly(tmp_path):
    seg = _log_with_segments(tmp_path)
    _rewrite(seg, lambda raw: raw.__setitem__(_slot(250) + 33, raw[_slot(250) + 33] ^ 0x40))
    report = verify_audit_log(tmp_path)
    assert report.first_error[:2] == (str(seg), _slot(250))


def test_tamper_delete_a_record(tmp_path):
    seg = _log_with_segments(tmp_path)

    def delete(raw):
        n = struct.unpack_from("<Q", raw, HDR_OFF_COMMITTED)[0]
        raw[_slot(300) : _slot(n - 1)] = raw[_slot(301) : _slot(n)]
        raw[_slot(n - 1) : _slot(n)] = bytes(RECORD_SIZE)
        _counts(raw, -1, -1)

    _rewrite(seg, delete)
    report = verify_audit_log(tmp_path)
    assert not report.ok and report.unaccounted_missing
    assert report.chain_errors[0][:2] == (str(seg), _slot(300)), report.chain_errors


def test_tamper_insert_a_record(tmp_path):
    _log_with_segments(tmp_path)
    seg = tmp_path / segment_name(2)  # the last one has free slots to grow into

    def insert(raw):
        n = struct.unpack_from("<Q", raw, HDR_OFF_COMMITTED)[0]
        copy = bytes(raw[_slot(10) : _slot(11)])
        raw[_slot(401) : _slot(n + 1)] = raw[_slot(400) : _slot(n)]
        raw[_slot(400) : _slot(401)] = copy
        _counts(raw, 1, 1)

    _rewrite(seg, insert)
    report = verify_audit_log(tmp_path)
    assert not report.ok and report.duplicates
    assert report.chain_errors[0][:2] == (str(seg), _slot(400)), report.chain_errors


def test_tamper_reorder_two_records(tmp_path):
    seg = _log_with_segments(tmp_path)

    def swap(raw):
        a, b = bytes(raw[_slot(500) : _slot(501)]), bytes(raw[_slot(501) : _slot(502)])
        raw[_slot(500) : _slot(501)] = b
        raw[_slot(501) : _slot(502)] = a

    _rewrite(seg, swap)
    report = verify_audit_log(tmp_path)
    assert not report.ok
    assert report.chain_errors[0][:2] == (str(seg), _slot(500)), report.chain_errors


def test_tamper_truncate_records_or_file(tmp_path):
    seg = _log_with_segments(tmp_path)
    n = unpack_header(seg.read_bytes()[:HEADER_SIZE]).committed

    def cut(raw):
        raw[_slot(n - 5) : _slot(n)] = bytes(5 * RECORD_SIZE)
        _counts(raw, -5, 0)

    _rewrite(seg, cut)
    report = verify_audit_log(tmp_path)
    assert not report.ok and report.chain_errors[0][:2] == (str(seg), _slot(n - 5))
    os.truncate(seg, _slot(n - 100))
    report = verify_audit_log(tmp_path)
    assert report.first_error[:2] == (str(seg), _slot(n - 100))


def test_tamper_delete_a_whole_segment(tmp_path):
    _log_with_segments(tmp_path)
    os.unlink(tmp_path / segment_name(1))
    report = verify_audit_log(tmp_path)
    assert not report.ok
    assert report.chain_errors[0][:2] == (str(tmp_path / segment_name(2)), HDR_OFF_PREV_CHAIN)


def test_keyed_chain_cannot_be_recomputed_without_the_key(tmp_path, monkeypatch):
    monkeypatch.delenv("KILLSWITCH_AUDIT_HMAC_KEY", raising=False)
    key = os.urandom(32)
    with PyAuditLogger(tmp_path, hmac_key=key.hex()) as log:
        for i in range(100):
            log.audit_trade(1, i, 1)
    assert verify_audit_log(tmp_path, key=key).ok
    unkeyed = verify_audit_log(tmp_path)
    assert not unkeyed.ok and "KILLSWITCH_AUDIT_HMAC_KEY" in unkeyed.chain_errors[0][2]
    head = export_chain_head(tmp_path)
    assert head["keyed"] and head["head"] == verify_audit_log(tmp_path, key=key).chain_head
    with pytest.raises(KillSwitchAuditError, match="KEYED"):
        PyAuditLogger(tmp_path)  # continuing a keyed log needs the key
    seg = tmp_path / segment_name(0)

    def forge(raw):  # edit a record and recompute the chain as plain SHA-256
        struct.pack_into("<q", raw, _slot(50) + 40, 999)
        _restamp(raw, 50)
        h = unpack_header(bytes(raw[:HEADER_SIZE]))
        hasher = ChainHasher(h.prev_chain, 0)
        hasher.update(bytes(raw[HEADER_SIZE : _slot(h.chain_records)]))
        raw[HDR_OFF_CHAIN_HEAD : HDR_OFF_CHAIN_HEAD + 32] = hasher.digest()

    _rewrite(seg, forge)
    assert not verify_audit_log(tmp_path, key=key).chain_ok
    monkeypatch.setenv("KILLSWITCH_AUDIT_HMAC_KEY", key.hex())
    report = verify_audit_log(tmp_path)  # the key from the environment
    assert report.keyed and report.chain_errors[0][0] == str(seg)


# ------------------------------------------------------------------ full disk, other backend


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 4 MiB tmpfs (needs root; skipped with the reason otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True
    )
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {out.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.fault
def test_full_disk_never_crashes_and_kill_switch_records_land_when_space_returns(small_tmpfs):
    d = small_tmpfs / "audit"
    log = PyAuditLogger(d, segment_size_mb=1, buffer_size=1024, flush_interval_ms=1)
    filler = small_tmpfs / "filler"
    fd = os.open(filler, os.O_RDWR | os.O_CREAT)
    with contextlib.suppress(OSError):  # take all the space that is left
        size = os.statvfs(small_tmpfs).f_bavail * os.statvfs(small_tmpfs).f_frsize
        os.posix_fallocate(fd, 0, max(size - 8192, 4096))
    os.close(fd)
    deadline = time.monotonic() + 20
    while log.get_stats()["sink_errors"] == 0 and time.monotonic() < deadline:
        for i in range(2000):
            log.audit_trade(1, i, 1)
        time.sleep(0.002)
    stats = log.get_stats()
    assert stats["sink_errors"] > 0, "the disk filled up and the error was counted"
    for _ in range(3000):
        log.audit_trade(1, 1, 1)
    assert log.get_stats()["dropped_main"] > 0, "main ring losses are counted, never waited on"
    ks = log.audit_kill_switch(KillSwitchReason.MANUAL, 9, 0, 0)
    assert ks >= 0, "the emergency ring holds the kill switch while the disk is full"
    os.unlink(filler)  # space returns
    assert log.flush(timeout=10)
    log.close()
    kills = [r.seq for r in read_audit_log(d, kinds=[RecordKind.KILL_SWITCH])]
    assert kills == [ks]
    report = verify_audit_log(d)
    assert report.ok and report.gaps_accounted == log.get_stats()["dropped_main"], report.lines()


@pytest.mark.skipif(
    not __import__("importlib").util.find_spec("killswitch_audit._native"),
    reason="native extension not built",
)
def test_python_and_native_backends_continue_each_others_logs(tmp_path):
    from killswitch_audit import _native

    with _native.AuditLogger(tmp_path) as log:
        for i in range(1000):
            log.audit_trade(1, i, 1)
    with PyAuditLogger(tmp_path) as log:
        for i in range(1000):
            log.audit_trade(2, i, 1)
        log.audit_kill_switch(KillSwitchReason.MANUAL, 0, 0, 0)
    with _native.AuditLogger(tmp_path) as log:
        log.audit_trade(3, 0, 1)
    report = verify_audit_log(tmp_path)
    assert report.ok, report.lines()
    assert report.segments == 3 and len(report.sessions) == 3
    symbols = [r.symbol_id for r in read_audit_log(tmp_path, kinds=["TRADE"])]
    assert symbols == [1] * 1000 + [2] * 1000 + [3]


def test_verify_of_a_live_log_sees_no_corruption_and_an_intact_chain(tmp_path):
    import threading

    stop = threading.Event()
    with PyAuditLogger(tmp_path, segment_size_mb=1, flush_interval_ms=1) as log:

        def write():
            i = 0
            while not stop.is_set():
                log.audit_trade(1, i, 1)
                i += 1

        writer = threading.Thread(target=write)
        writer.start()
        try:
            for _ in range(10):
                time.sleep(0.02)
                report = verify_audit_log(tmp_path)
                assert report.corrupt == [] and report.chain_ok, report.lines()
        finally:
            stop.set()
            writer.join()
    assert verify_audit_log(tmp_path).ok


def test_close_racing_with_writer_threads_keeps_every_accepted_record(tmp_path):
    import threading

    log = PyAuditLogger(tmp_path, buffer_size=1 << 16)
    accepted: list[list[int]] = [[] for _ in range(4)]
    errors: list[BaseException] = []
    go = threading.Event()

    def writer(k: int) -> None:
        go.wait()
        i = 0
        try:
            while True:
                i += 1
                if i % 50 == 0:
                    seq = log.audit_kill_switch(KillSwitchReason.OTHER, k, i, -i)
                else:
                    seq = log.audit_trade(k, i, 100, i)
                if seq >= 0:
                    accepted[k].append(seq)
        except AuditLoggerClosed:
            return
        except BaseException as e:  # anything else is a bug
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    go.set()
    time.sleep(0.2)
    log.close()
    for t in threads:
        t.join(timeout=10)
    assert not errors and not any(t.is_alive() for t in threads)
    stored = {r.seq for r in read_audit_log(tmp_path) if not r.is_system}
    want = {s for seqs in accepted for s in seqs}
    assert want and want == stored, "every seq handed out before close is in the file"
    assert verify_audit_log(tmp_path).ok


def test_spin_policy_waits_a_bounded_time_then_drops(tmp_path):
    with PyAuditLogger(
        tmp_path, buffer_size=1024, overflow_policy="spin", spin_limit_us=500
    ) as log:
        with log.flusher_paused():
            time.sleep(0.02)
            for i in range(1024):
                assert log.audit_trade(1, i, 1) >= 0
            t = time.perf_counter()
            assert log.audit_trade(1, 0, 1) == -1, "the paused flusher never makes room"
            waited = time.perf_counter() - t
        assert 0.0004 <= waited < 0.5
    report = verify_audit_log(tmp_path)
    assert report.ok and report.gaps_accounted == 1
