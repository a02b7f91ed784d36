"""A halt holds across kill -9: a child process halts scopes and is SIGKILLed; a new KillSwitch
on the same directory restores every scope before it answers the gate. Then a reset, another
SIGKILL, and the scopes are active again. Real processes, real signals, on both engines
(rings, and direct: the rollback engine where each call writes its record itself)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from killswitch_audit import (
    AuditLogger,
    RecordKind,
    TradingState,
    default_config,
    read_audit_log,
)
from killswitch_audit.killswitch import KillSwitch, Scope

pytestmark = pytest.mark.fault

STRATEGY = Scope(strategy="mm")
ACCOUNT = Scope(account="A9")
SYMBOL_VENUE = Scope(symbol_id=42, venue="XEUR")

ORDER_MM = Scope(account="A1", strategy="mm", symbol_id=7, venue="XNAS")
ORDER_A9 = Scope(account="A9", strategy="arb", symbol_id=7, venue="XNAS")
ORDER_42 = Scope(account="A1", strategy="arb", symbol_id=42, venue="XEUR")
ORDER_FREE = Scope(account="A1", strategy="arb", symbol_id=42, venue="XNAS")

CHILD = textwrap.dedent(
    """
    import sys, time
    from killswitch_audit import AuditLogger, default_config
    from killswitch_audit.killswitch import KillSwitch, Scope

    directory, engine, action = sys.argv[1:4]
    lg = AuditLogger(directory, engine=engine)
    ks = KillSwitch(lg, latency_monitor=False, config=default_config())
    ks.add_stop_handler(lambda: None)
    strategy = Scope(strategy="mm")
    account = Scope(account="A9")
    symbol_venue = Scope(symbol_id=42, venue="XEUR")
    if action == "halt-scopes":
        for r in (
            ks.emergency_stop("manual", scope=strategy, wait_durable=5.0),
            ks.reduce_only("risk_system", scope=account, wait_durable=5.0),
            ks.emergency_stop("position_limit", 42, 10, 0, scope=symbol_venue, wait_durable=5.0),
        ):
            assert r.durable, r
    elif action == "reset-scopes":
        for s in (strategy, account, symbol_venue):
            ks.reset("alice", "post-mortem done", scope=s)
    elif action == "halt-firm":
        assert ks.emergency_stop("daily_loss_limit", wait_durable=5.0).durable
    elif action == "reset-firm":
        ks.reset("bob", "new day")
    # a trade after the state change: the process is busy when it dies
    lg.audit_trade(1, 1, 1, 1)
    print("ready", flush=True)
    time.sleep(120)
    """
)


def kill_child_after(directory, engine, action):
    """Runs CHILD with `action`, waits for "ready", SIGKILLs it; returns its exit status."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory), engine, action],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return proc.returncode


def reopen(directory, engine):
    lg = AuditLogger(directory, engine=engine)
    return lg, KillSwitch(lg, latency_monitor=False, config=default_config())


@pytest.mark.parametrize("engine", ["rings", "direct"])
def test_scoped_halts_survive_sigkill_and_a_reset_survives_the_next_one(tmp_path, engine):
    d = tmp_path / "audit"
    kill_child_after(d, engine, "halt-scopes")

    lg, ks = reopen(d, engine)
    try:
        assert ks.trading_state(STRATEGY) == TradingState.HALTED
        assert ks.trading_state(ACCOUNT) == TradingState.REDUCING
        assert ks.trading_state(SYMBOL_VENUE) == TradingState.HALTED
        assert not ks.allows(ORDER_MM)
        assert not ks.allows(ORDER_A9) and ks.allows(ORDER_A9, reduces_position=True)
        assert not ks.allows(ORDER_42)
        assert ks.allows(ORDER_FREE)  # nothing else was halted
        assert ks.trading_state() == TradingState.ACTIVE
    finally:
        lg.close()

    kill_child_after(d, engine, "reset-scopes")

    lg, ks = reopen(d, engine)
    try:
        for s in (STRATEGY, ACCOUNT, SYMBOL_VENUE):
            assert ks.trading_state(s) == TradingState.ACTIVE
        assert all(ks.allows(o) for o in (ORDER_MM, ORDER_A9, ORDER_42, ORDER_FREE))
        assert not ks.halted
    finally:
        lg.close()
    resets = [r for r in read_audit_log(d) if r.kind == RecordKind.RESET]
    assert [r.code for r in resets] == [0, 0, 0]


@pytest.mark.parametrize("engine", ["rings", "direct"])
def test_a_firm_halt_survives_sigkill_for_every_scope(tmp_path, engine):
    d = tmp_path / "audit"
    kill_child_after(d, engine, "halt-firm")
    lg, ks = reopen(d, engine)
    try:
        for order in (ORDER_MM, ORDER_A9, ORDER_42, ORDER_FREE, None):
            assert not ks.allows(order)
            assert not ks.allows(order, reduces_position=True)
    finally:
        lg.close()
    kill_child_after(d, engine, "reset-firm")
    lg, ks = reopen(d, engine)
    try:
        assert ks.allows(ORDER_FREE) and ks.trading_state() == TradingState.ACTIVE
    finally:
        lg.close()
