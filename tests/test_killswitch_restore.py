"""Restore at start (every scope back, firm-wide when in doubt, a damaged log halts the firm),
the writer check, clock evidence, and the switch's small API promises."""

from __future__ import annotations

import contextlib
import logging
import time

import pytest
from killswitch_audit import (
    AuditLogger,
    RecordKind,
    TradingState,
    read_audit_log,
)
from killswitch_audit.killswitch import (
    KillSwitch,
    Scope,
)
from killswitch_support import (
    ORDER_ARB,
    ORDER_MM,
    S,
    make_ks,
    records,
)


@contextlib.contextmanager
def reopened(logdir, cls=AuditLogger):
    """A new logger and switch on an existing directory (a restart), closed afterwards."""
    lg = cls(logdir)
    try:
        yield lg, make_ks(lg)
    finally:
        lg.close()


def test_a_new_switch_on_the_same_directory_restores_every_scope(logdir):
    lg = AuditLogger(logdir)
    ks = make_ks(lg)
    ks.emergency_stop("manual", scope=S)
    ks.reduce_only("manual", scope=Scope(account="A9", venue="XEUR"))
    ks.emergency_stop("manual", scope=Scope(symbol_id=42))
    ks.reset("alice", "symbol fixed", scope=Scope(symbol_id=42))
    lg.close()
    with reopened(logdir) as (lg, ks2):
        assert ks2.trading_state(ORDER_MM) == TradingState.HALTED
        assert ks2.trading_state(Scope(account="A9", venue="XEUR")) == TradingState.REDUCING
        assert ks2.trading_state(Scope(symbol_id=42)) == TradingState.ACTIVE
        assert ks2.allows(ORDER_ARB)
        # every state change of a scope carries the scope's text (one chunk for "scope:
        # strategy=mm"), so restore never depends on an older record having survived
        before = len(records(lg, RecordKind.TEXT))
        rep = ks2.emergency_stop("manual", scope=S)
        new = [r for r in records(lg, RecordKind.TEXT)][before:]
        assert [r.c for r in new] == [rep.seq + 1]


def test_a_halt_of_a_scope_whose_text_is_missing_restores_firm_wide(logdir):
    lg = AuditLogger(logdir)
    lg.audit(int(RecordKind.STATE_CHANGE), int(TradingState.HALTED), 0, 0, 4, 0xDEADBEEF, True)
    lg.close()
    with reopened(logdir) as (_lg, ks):
        assert ks.trading_state() == TradingState.HALTED
        assert any("fail closed" in n for n in ks.restore_notes)


def test_a_firm_reset_lifts_a_fail_closed_restore_for_good(logdir):
    lg = AuditLogger(logdir)
    lg.audit(int(RecordKind.STATE_CHANGE), int(TradingState.HALTED), 0, 0, 4, 0xDEADBEEF, True)
    lg.close()
    with reopened(logdir) as (_lg, ks):
        assert ks.trading_state() == TradingState.HALTED
        ks.reset("alice", "unknown scope investigated")
    with reopened(logdir) as (_lg, ks):
        assert ks.trading_state() == TradingState.ACTIVE


def test_a_damaged_log_restores_firm_halted_until_a_firm_reset(logdir):
    from killswitch_audit.format import HEADER_SIZE, RECORD_SIZE

    lg = AuditLogger(logdir)
    for i in range(50):
        lg.audit_trade(1, 1, 1, i)
    lg.close()
    seg = sorted(logdir.glob("*.seg"))[0]
    with open(seg, "r+b") as f:  # flip a byte inside record 5 (below `committed`)
        f.seek(HEADER_SIZE + 5 * RECORD_SIZE + 40)
        b = f.read(1)
        f.seek(HEADER_SIZE + 5 * RECORD_SIZE + 40)
        f.write(bytes([b[0] ^ 0xFF]))
    with reopened(logdir) as (_lg, ks):
        assert ks.trading_state() == TradingState.HALTED
        assert any("damaged" in n for n in ks.restore_notes)
        ks.reset("alice", "segment 0 damaged, state reviewed by hand")
    with reopened(logdir) as (_lg, ks):
        assert ks.trading_state() == TradingState.ACTIVE


def test_the_switch_refuses_a_writer_that_is_not_the_core_engine_by_name(logdir):
    """The kill switch's stop, latch and restore run in the Rust core, whose records must go
    into the log the core writes: any other object is refused at construction, with its
    type's name, instead of accepting halts it would not carry (either engine of the core's
    AuditLogger is accepted: test_restart.py runs the switch on both)."""

    class HandRolledLogger:
        def audit_kill_switch(self, *args):
            return 0

    with pytest.raises(TypeError, match="HandRolledLogger"):
        make_ks(HandRolledLogger())


def test_clock_evidence_carries_the_kernel_figures_and_alerts_when_unsynchronised(logger, caplog):
    from killswitch_audit import _native

    state, est, mx, bits = _native.clock_sync_state()
    with caplog.at_level(logging.WARNING, logger="killswitch_audit.alerts"):
        ks = make_ks(logger)
    ev = ks.clock
    assert ev["status_bits"] == bits
    if state == 2:
        assert ev["state"] == "unknown" and ev["max_error_us"] is None
        assert "unknown" in caplog.text
    else:
        assert ev["max_error_us"] == mx and ev["est_error_us"] == est
        if state == 1 or mx > 100:
            assert not ev["ok"] and "clock" in caplog.text
        else:
            assert ev["ok"]


def test_clock_records_in_the_log_carry_the_kernels_figures(logdir):
    from killswitch_audit import _native

    lg = AuditLogger(logdir)
    lg.close()
    state, _est, mx, bits = _native.clock_sync_state()
    clock = [r for r in read_audit_log(logdir) if r.kind == RecordKind.CLOCK]
    assert clock and all(r.is_system for r in clock)
    r = clock[0]
    assert r.code == state
    if state == 2:  # no kernel figure: none is invented
        assert (r.a, r.b) == (-1, -1)
    else:
        # the kernel's maximum error grows between NTP updates; allow for the drift since
        assert abs(r.b - mx) <= max(1_000, mx // 10)
        assert r.c & 0xFFFF_FFFF == bits & 0xFFFF_FFFF


@pytest.mark.latency
def test_gate_costs_about_an_empty_pyo3_call(logger):
    from killswitch_audit import _native

    ks = make_ks(logger)
    noop, allows = _native.noop_audit, ks.allows
    ks.emergency_stop("manual", scope=Scope(strategy="other"))  # the gate is not clear

    def per_call(fn, *args):
        t0 = time.perf_counter_ns()
        for _ in range(20_000):
            fn(*args)
        return time.perf_counter_ns() - t0

    allows(ORDER_MM)
    best_allows = best_noop = float("inf")
    for _ in range(15):  # interleaved rounds, best of each: robust to a noisy neighbour
        best_allows = min(best_allows, per_call(allows, ORDER_MM))
        best_noop = min(best_noop, per_call(noop, 1, 2, 3, 4))
    ratio = best_allows / best_noop
    assert ratio < 3.0, f"allows() costs {ratio:.2f}x an empty PyO3 call"


def test_latency_monitor_true_takes_the_global_one_and_junk_is_a_named_type_error(logger):
    from killswitch_audit.monitor import get_global_latency_monitor

    ks = KillSwitch(logger, latency_monitor=True, check_clock=False)
    assert ks.latency_monitor is get_global_latency_monitor()
    with pytest.raises(TypeError, match="latency_monitor must be"):
        KillSwitch(logger, latency_monitor="yes", check_clock=False)


def test_reset_takes_its_reason_as_note_or_reason_and_returns_the_firm_state(logger):
    ks = make_ks(logger)
    ks.emergency_stop("manual")
    assert ks.reset(operator="alice", reason="fixed") == TradingState.ACTIVE
    ks.emergency_stop("manual")
    assert ks.reset("alice", "fixed") == TradingState.ACTIVE
    ks.emergency_stop("manual")
    with pytest.raises(TypeError, match="once"):
        ks.reset("alice", "a", reason="b")
