"""Reset and triggers: resets are audited with operator, note and states, refused and audited
when incomplete or unwritable; loss, drawdown, position, rate and execution triggers trip with
their reasons and re-arm after a reset; triggers from the YAML config."""

from __future__ import annotations

import logging

import pytest
from killswitch_audit import (
    AuditConfig,
    AuditLogger,
    KillSwitchReason,
    RecordKind,
    ResetRefused,
    TradingState,
)
from killswitch_audit.killswitch import (
    Drawdown,
    LossLimit,
    MessageRate,
    PositionLimit,
    RepeatedExecutions,
    Scope,
    Trigger,
    scope_id,
)
from killswitch_support import (
    ORDER_MM,
    S,
    make_ks,
    records,
    texts,
)


def config_with(**kill_switch):
    return AuditConfig.from_dict({"kill_switch": kill_switch})


def test_reset_is_audited_with_operator_note_and_before_after_state(logger):
    ks = make_ks(logger)
    ks.emergency_stop("manual", scope=S)
    assert ks.reset("alice", "limits reviewed", scope=S) == TradingState.ACTIVE
    assert ks.allows(ORDER_MM) and not ks.halted
    (r,) = records(logger, RecordKind.RESET)
    assert (r.code, r.a, r.b, r.c) == (0, int(TradingState.HALTED), 0, scope_id(S))
    t = texts(logger)[r.seq]
    assert "operator=alice" in t and "limits reviewed" in t and "strategy=mm" in t


@pytest.mark.parametrize(
    "operator, note",
    [("alice", ""), ("", "reviewed"), ("  ", "reviewed"), (None, "reviewed")],
)
def test_reset_without_operator_or_reason_is_refused_and_audited(logger, operator, note):
    ks = make_ks(logger)
    ks.emergency_stop("manual")
    with pytest.raises(ResetRefused):
        ks.reset(operator, note)
    assert ks.trading_state() == TradingState.HALTED
    (r,) = records(logger, RecordKind.RESET)
    assert r.code == 1 and r.a == r.b == int(TradingState.HALTED)
    assert texts(logger)[r.seq].startswith("REFUSED")


def test_reset_with_the_same_second_operator_is_refused_when_config_requires_two(logger):
    ks = make_ks(logger, config_with(reset={"require_second_operator": True}))
    ks.emergency_stop("manual")
    with pytest.raises(ResetRefused, match="second operator"):
        ks.reset("alice", "reviewed", second_operator="alice")
    with pytest.raises(ResetRefused, match="second operator"):
        ks.reset("alice", "reviewed")
    assert ks.trading_state() == TradingState.HALTED
    ks.reset("alice", "reviewed", second_operator="bob")
    assert ks.trading_state() == TradingState.ACTIVE
    outcomes = [r.code for r in records(logger, RecordKind.RESET)]
    assert outcomes == [1, 1, 0]
    assert "second=bob" in texts(logger)[records(logger, RecordKind.RESET)[2].seq]


def test_reset_of_a_scope_that_is_not_halted_is_refused_and_audited(logger):
    ks = make_ks(logger)
    ks.emergency_stop("manual", scope=S)
    with pytest.raises(ResetRefused, match="not halted"):
        ks.reset("alice", "reviewed")  # the firm scope itself is not halted
    (r,) = records(logger, RecordKind.RESET)
    assert r.code == 1 and r.c == 0
    assert not ks.allows(ORDER_MM)


def test_a_reset_that_cannot_be_audited_is_refused_and_the_halt_stays(logdir):
    lg = AuditLogger(logdir)
    ks = make_ks(lg)
    ks.emergency_stop("manual", scope=S)
    lg.close()
    with pytest.raises(ResetRefused, match="could not be audited"):
        ks.reset("alice", "reviewed", scope=S)
    assert not ks.allows(ORDER_MM)
    assert ks.trading_state(ORDER_MM) == TradingState.HALTED


def test_loss_limit_trips_once_and_rearms_after_reset(logger):
    ks = make_ks(logger, triggers=[LossLimit(daily_loss_cents=1_000)])
    calls = []
    ks.add_stop_handler(lambda: calls.append(1))
    ks.on_pnl(-999)
    assert ks.allows(ORDER_MM)
    ks.on_pnl(-1_000)
    ks.on_pnl(-1_500)  # latched: no second stop per tick
    assert not ks.allows(ORDER_MM) and calls == [1]
    (k,) = records(logger, RecordKind.KILL_SWITCH)
    assert k.code == int(KillSwitchReason.DAILY_LOSS_LIMIT) and k.b == -1_000
    ks.reset("alice", "new day")
    ks.on_pnl(-2_000)
    assert calls == [1, 1]


def test_drawdown_position_rate_and_execution_triggers_trip_with_their_reasons(logger):
    ks = make_ks(
        logger,
        triggers=[
            Drawdown(500, scope=Scope(strategy="dd")),
            PositionLimit(100, scope=Scope(strategy="pos")),
            MessageRate(10, scope=Scope(strategy="rate")),
            RepeatedExecutions(3, 1.0, scope=Scope(strategy="fills")),
        ],
    )
    ks.on_pnl(1_000)
    ks.on_pnl(600)
    assert ks.trading_state(Scope(strategy="dd")) == TradingState.ACTIVE
    ks.on_pnl(500)
    assert ks.trading_state(Scope(strategy="dd")) == TradingState.HALTED
    ks.on_position(100, symbol_id=3)
    assert ks.trading_state(Scope(strategy="pos")) == TradingState.ACTIVE
    ks.on_position(-101, symbol_id=3)
    assert ks.trading_state(Scope(strategy="pos")) == TradingState.HALTED
    t0 = 1_000_000_000_000
    for i in range(10):
        ks.on_order(now_ns=t0 + i * 1_000_000)
    assert ks.trading_state(Scope(strategy="rate")) == TradingState.ACTIVE
    ks.on_order(now_ns=t0 + 2_000_000_000)  # 11 orders, but the first 10 are a second old
    assert ks.trading_state(Scope(strategy="rate")) == TradingState.ACTIVE
    for i in range(10):
        ks.on_order(now_ns=t0 + 2_000_000_001 + i)
    assert ks.trading_state(Scope(strategy="rate")) == TradingState.HALTED
    ks.on_fill(now_ns=t0)
    ks.on_fill(now_ns=t0 + 2_000_000_000)
    ks.on_fill(now_ns=t0 + 2_100_000_000)
    assert ks.trading_state(Scope(strategy="fills")) == TradingState.ACTIVE
    ks.on_fill(now_ns=t0 + 2_200_000_000)
    assert ks.trading_state(Scope(strategy="fills")) == TradingState.HALTED
    reasons = [r.code for r in records(logger, RecordKind.KILL_SWITCH)]
    assert reasons == [
        int(KillSwitchReason.DRAWDOWN),
        int(KillSwitchReason.POSITION_LIMIT),
        int(KillSwitchReason.MESSAGE_RATE),
        int(KillSwitchReason.REPEATED_EXECUTIONS),
    ]


def test_a_trigger_whose_evaluation_raises_trips_the_switch(logger, caplog):
    class Broken(Trigger):
        events = ("pnl",)

        def on_pnl(self, pnl_cents):
            raise ZeroDivisionError("bad model")

    ks = make_ks(logger, triggers=[Broken()])
    with caplog.at_level(logging.ERROR, logger="killswitch_audit"):
        ks.on_pnl(10)
    assert not ks.allows(ORDER_MM)
    (k,) = records(logger, RecordKind.KILL_SWITCH)
    assert k.code == int(KillSwitchReason.TRIGGER_FAILURE) and k.b == 10
    assert "bad model" in texts(logger)[k.seq]
    assert ks.trigger_failures == 1 and "fail closed" in caplog.text


def test_triggers_come_from_the_yaml_config(logger):
    cfg = config_with(
        triggers={
            "daily_loss_limit_cents": 100,
            "max_drawdown_cents": 200,
            "max_position": 5,
            "max_messages_per_s": 50,
            "repeated_executions": {"count": 4, "window_s": 2.0},
        }
    )
    ks = make_ks(logger, cfg)
    kinds = sorted(type(t).__name__ for t in ks.triggers)
    assert kinds == ["Drawdown", "LossLimit", "MessageRate", "PositionLimit", "RepeatedExecutions"]
    ks.on_position(6)
    assert ks.trading_state() == TradingState.HALTED
