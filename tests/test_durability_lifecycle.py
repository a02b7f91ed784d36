"""The logger's life cycle: shutdown drains everything, fork children get a clear error, close
races with writer threads, bad arguments are named and write nothing, durable flush syncs."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from killswitch_audit import (
    NATIVE_AVAILABLE,
    AuditLoggerClosed,
    RecordKind,
    read_audit_log,
    verify_audit_log,
)

if NATIVE_AVAILABLE:
    pass
from durability_support import (  # noqa: F401 (fixtures among them)
    ENGINES,
    make_logger,
    needs_native,
    run_child,
)

SHUTDOWN_CHILD = """
import os, sys, time
import killswitch_audit
from functools import partial
from killswitch_audit import _native
d, engine, mode = sys.argv[1], sys.argv[2], sys.argv[3]
cls = partial(_native.AuditLogger, engine=engine)
lg = cls(d, buffer_size=8192)
lg._set_paused(True)  # everything below stays in the rings until shutdown drains it
seqs = [lg.audit_trade(1, i, 100, i) for i in range(5000)]
seqs += [lg.audit_kill_switch(4, 1, 2, 3) for _ in range(100)]
assert min(seqs) >= 0
print(min(seqs), max(seqs), flush=True)
if mode == "close":
    lg.close()
elif mode == "context":
    with lg:
        pass
elif mode == "exit":
    pass  # interpreter exit without close(): atexit drains
elif mode == "sigterm":
    # the parent sends SIGTERM. Short sleeps: CPython runs a handler between bytecodes, so a
    # signal that lands just before a long blocking call would wait for that call to return
    for _ in range(600):
        time.sleep(0.05)
    print("not killed", flush=True)
"""


FORK_CHILD = """
import os, sys
from functools import partial
from killswitch_audit import _native, AuditLoggerClosed
d, engine = sys.argv[1], sys.argv[2]
cls = partial(_native.AuditLogger, engine=engine)
lg = cls(d)
before = [lg.audit_trade(1, i, 100) for i in range(1000)]
pid = os.fork()
if pid == 0:
    # the child: the inherited logger must refuse, clearly, and never write
    try:
        lg.audit_kill_switch(1, 1, 1, 1)
        print("CHILD WROTE", flush=True)
    except AuditLoggerClosed as e:
        print("CHILD CLOSED", str(e).replace("\\n", " "), flush=True)
    try:
        lg.audit_trade(1, 1, 1)
        print("CHILD WROTE", flush=True)
    except AuditLoggerClosed:
        pass
    lg.close()  # harmless in the child
    sys.exit(0)  # normal exit: atexit handlers run in the child too
_, status = os.waitpid(pid, 0)
after = [lg.audit_trade(2, i, 100) for i in range(1000)]
lg.close()
print("PARENT", os.waitstatus_to_exitcode(status), min(before), max(after), flush=True)
"""


C_FORK_CHILD = """
import ctypes, os, sys, time
from killswitch_audit import _native, AuditLoggerClosed
lg = _native.AuditLogger(sys.argv[1], engine=sys.argv[2])
seqs = [lg.audit_trade(1, i, 1) for i in range(100)]
pid = ctypes.CDLL(None, use_errno=True).fork()  # bypasses Python's at-fork hooks
if pid == 0:
    code = 1
    try:
        t = time.monotonic()
        flushed = lg.flush(timeout=5)
        lg.close()  # must not join the parent's flusher thread (it does not exist here)
        try:
            lg.audit_trade(1, 1, 1)
        except AuditLoggerClosed as e:
            code = 0 if not flushed and "fork" in str(e) and time.monotonic() - t < 2 else 2
    finally:
        os._exit(code)
_, status = os.waitpid(pid, 0)
seqs += [lg.audit_trade(2, i, 1) for i in range(100)]
lg.close()
print(os.waitstatus_to_exitcode(status), min(seqs), max(seqs))
"""


def _race_writer(lg, go: threading.Event, k: int, out: list, errors: list) -> None:
    go.wait()
    i = 0
    try:
        while True:
            i += 1
            if i % 16 == 0:
                s = lg.audit_kill_switch(k, i, i, i)
            else:
                s = lg.audit_trade(k, i, 100, i)
            out.append((s, time.perf_counter_ns()))
    except AuditLoggerClosed:
        return
    except BaseException as e:
        errors.append(e)


@pytest.mark.fault
@pytest.mark.parametrize("mode", ["close", "context", "exit", "sigterm"])
@pytest.mark.parametrize("engine", ENGINES)
def test_shutdown_drains_everything(engine, mode, tmp_path):
    d = tmp_path / "log"
    cmd = [sys.executable, "-c", textwrap.dedent(SHUTDOWN_CHILD), str(d), engine, mode]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    lo, hi = map(int, line.split())
    if mode == "sigterm":
        proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=30)
    expected_rc = -signal.SIGTERM if mode == "sigterm" else 0
    assert proc.returncode == expected_rc, (proc.returncode, err)
    assert "not killed" not in rest
    records = list(read_audit_log(d))
    present = {r.seq for r in records}
    missing = sorted(set(range(lo, hi + 1)) - present)
    assert not missing, f"{len(missing)} record(s) not drained at {mode}: {missing[:5]}"
    assert any(r.kind == RecordKind.SESSION_END for r in records), "no SESSION_END"
    report = verify_audit_log(d)
    assert report.ok, str(report)


@pytest.mark.fault
@pytest.mark.parametrize("engine", ENGINES)
def test_fork_child_gets_a_clear_error_and_parent_log_is_unaffected(engine, tmp_path):
    d = tmp_path / "log"
    child = run_child(FORK_CHILD, str(d), engine)
    assert child.returncode == 0, child.stderr
    lines = child.stdout.splitlines()
    assert "CHILD WROTE" not in child.stdout
    closed = [ln for ln in lines if ln.startswith("CHILD CLOSED")]
    assert closed, child.stdout
    assert "fork" in closed[0], f"the error does not say why: {closed[0]!r}"
    parent = next(ln for ln in lines if ln.startswith("PARENT")).split()
    assert parent[1] == "0"
    lo, hi = int(parent[2]), int(parent[3])
    records = list(read_audit_log(d))
    seqs = [r.seq for r in records]
    assert set(range(lo, hi + 1)) <= set(seqs)
    assert len([r for r in records if r.kind == RecordKind.SESSION_END]) == 1
    report = verify_audit_log(d)
    assert report.ok, str(report)


@pytest.mark.fault
@pytest.mark.parametrize("engine", ENGINES)
def test_fork_without_the_at_fork_hook_is_detected_at_flush_and_close(engine, tmp_path):
    """A fork from C (no Python at-fork hook ran): the child's flush() returns False at once,
    close() does not hang joining a thread that does not exist, later calls raise the fork
    error; the parent's log is unaffected."""
    d = tmp_path / "log"
    child = run_child(C_FORK_CHILD, str(d), engine, timeout=30)
    assert child.returncode == 0, child.stderr
    rc, lo, hi = map(int, child.stdout.split())
    assert rc == 0, "the forked child hung, wrote, or gave an unclear error"
    assert set(range(lo, hi + 1)) <= {r.seq for r in read_audit_log(d)}
    assert verify_audit_log(d).ok


@pytest.mark.parametrize("engine", ENGINES)
def test_close_racing_with_four_writer_threads(engine, tmp_path):
    """Four threads write while the main thread closes: no crash, writers see only seqs, -1
    or AuditLoggerClosed, and every seq returned before close() began is in the file (and,
    in practice, every seq returned at all)."""
    for round_ in range(4):
        d = tmp_path / f"log{round_}"
        lg = make_logger(engine, d, buffer_size=1 << 16)
        go = threading.Event()
        results: list[list[tuple[int, int]]] = [[] for _ in range(4)]
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=_race_writer, args=(lg, go, k, results[k], errors))
            for k in range(4)
        ]
        for t in threads:
            t.start()
        go.set()
        time.sleep(0.02 + 0.02 * round_)
        close_began = time.perf_counter_ns()
        lg.close()
        for t in threads:
            t.join(timeout=30)
            assert not t.is_alive(), "a writer hung after close"
        assert not errors, errors
        present = {r.seq for r in read_audit_log(d)}
        before = [s for out in results for s, t in out if s >= 0 and t < close_began]
        assert before, "no writes before close"
        missing = sorted(set(before) - present)
        assert not missing, f"{len(missing)} seq(s) returned before close() are lost"
        after = [s for out in results for s, t in out if s >= 0 and t >= close_began]
        lost_after = sorted(set(after) - present)
        assert not lost_after, f"seq(s) returned during close() were lost: {lost_after[:5]}"
        report = verify_audit_log(d)
        assert report.chain_ok and not report.corrupt and not report.duplicates, str(report)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"buffer_size": "1024"}, TypeError),
        ({"buffer_size": 1024.0}, TypeError),
        ({"buffer_size": -1024}, ValueError),
        ({"buffer_size": 0}, ValueError),
        ({"buffer_size": 1000}, ValueError),
        # a size too big for any integer type: OverflowError (native) or ValueError (Python)
        ({"buffer_size": 2**70}, (OverflowError, ValueError)),
        ({"emergency_buffer_size": -1}, ValueError),
        ({"emergency_buffer_size": 3}, ValueError),
        ({"segment_size_mb": 0}, ValueError),
        ({"segment_size_mb": -1}, ValueError),
        ({"segment_size_mb": 2**64}, (OverflowError, ValueError)),
        ({"flush_interval_ms": 0}, ValueError),
        ({"flush_interval_ms": -2}, ValueError),
        ({"flush_interval_ms": "2"}, TypeError),
        ({"overflow_policy": "block"}, ValueError),
    ],
)
def test_bad_constructor_arguments_raise(engine, kwargs, exc, tmp_path):
    with pytest.raises(exc):
        make_logger(engine, tmp_path / "log", **kwargs)


@pytest.mark.parametrize("engine", ENGINES)
def test_bad_directory_type_raises_type_error(engine):
    with pytest.raises(TypeError):
        make_logger(engine, 12345)


@pytest.mark.parametrize("engine", ENGINES)
def test_bad_audit_arguments_raise_and_write_nothing(engine, tmp_path):
    d = tmp_path / "log"
    lg = make_logger(engine, d)
    cases = [
        (TypeError, lambda: lg.audit_trade("7", 1, 1)),
        (TypeError, lambda: lg.audit_trade(7, 1.5, 1)),
        (TypeError, lambda: lg.audit_trade(7, 1, None)),
        (TypeError, lambda: lg.audit_kill_switch("DAILY", 1, 1, 1)),
        (TypeError, lambda: lg.audit_kill_switch(1, 1, 1, b"1")),
        (OverflowError, lambda: lg.audit_trade(2**32, 1, 1)),
        (OverflowError, lambda: lg.audit_trade(-1, 1, 1)),
        (OverflowError, lambda: lg.audit_trade(1, 2**63, 1)),
        (OverflowError, lambda: lg.audit_trade(1, 1, -(2**63) - 1)),
        (OverflowError, lambda: lg.audit_trade(1, 1, 1, order_id=2**64)),
        (OverflowError, lambda: lg.audit_trade(1, 1, 1, order_id=-1)),
        (OverflowError, lambda: lg.audit_kill_switch(2**16, 1, 1, 1)),
        (OverflowError, lambda: lg.audit_kill_switch(1, 1, 2**100, 1)),
        (ValueError, lambda: lg.flush(timeout=-1)),
        (TypeError, lambda: lg.flush(timeout="1")),
        (ValueError, lambda: lg.audit(0)),  # not a record kind
        (ValueError, lambda: lg.audit(int(RecordKind.GAP))),  # the flusher's own kinds
        (OverflowError, lambda: lg.audit(256)),
        (TypeError, lambda: lg.audit("TRADE")),
        (OverflowError, lambda: lg.audit(int(RecordKind.USER), a=2**63)),
    ]
    for exc, call in cases:
        with pytest.raises(exc):
            call()
    # extreme but valid values round-trip exactly
    s1 = lg.audit_trade(2**32 - 1, 2**63 - 1, -(2**63), 2**64 - 1)
    s2 = lg.audit_kill_switch(2**16 - 1, 0, -(2**63), 2**63 - 1)
    lg.close()
    records = [r for r in read_audit_log(d) if r.kind in (RecordKind.TRADE, RecordKind.KILL_SWITCH)]
    assert sorted(r.seq for r in records) == sorted([s1, s2])
    by_seq = {r.seq: r for r in records}
    t, k = by_seq[s1], by_seq[s2]
    assert (t.symbol_id, t.a, t.b, t.c) == (2**32 - 1, 2**63 - 1, -(2**63), 2**64 - 1)
    assert (k.code, k.a, k.b) == (2**16 - 1, -(2**63), 2**63 - 1)


@pytest.mark.parametrize("engine", ENGINES)
def test_use_after_close_raises_audit_logger_closed(engine, tmp_path):
    lg = make_logger(engine, tmp_path / "log")
    lg.audit_trade(1, 1, 1)
    lg.close()
    lg.close()  # idempotent
    assert lg.closed
    with pytest.raises(AuditLoggerClosed, match="closed"):
        lg.audit_trade(1, 1, 1)
    with pytest.raises(AuditLoggerClosed):
        lg.audit_kill_switch(1, 1, 1, 1)
    with lg:  # entering a closed logger is harmless; writes still refuse
        with pytest.raises(AuditLoggerClosed):
            lg.audit_trade(1, 1, 1)
    assert verify_audit_log(tmp_path / "log").ok


@pytest.mark.parametrize("engine", ENGINES)
def test_durable_flush_returns_after_an_fdatasync(engine, tmp_path):
    lg = make_logger(engine, tmp_path / "log")
    try:
        seqs = [lg.audit_trade(1, i, 1) for i in range(1000)]
        before = lg.get_stats()["durable_syncs"]
        assert lg.flush(timeout=10, durable=True)
        assert lg.get_stats()["durable_syncs"] > before
        present = {r.seq for r in read_audit_log(tmp_path / "log")}
        assert set(seqs) <= present
    finally:
        lg.close()
