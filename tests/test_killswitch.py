"""KillSwitch: the stop path, scopes, the order gate, reset, triggers, restore, clock evidence.

Every assertion is on records read back from the segment files, on counters, or on the gate's
answers; timing assertions are ratios (marked `latency`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time

import pytest
from killswitch_audit import (
    AuditConfig,
    AuditLogger,
    KillSwitchReason,
    RecordKind,
    ResetRefused,
    TradingState,
    default_config,
    read_audit_log,
    verify_audit_log,
)
from killswitch_audit.format import REC_FLAG_EMERGENCY
from killswitch_audit.killswitch import (
    Drawdown,
    KillSwitch,
    LossLimit,
    MessageRate,
    PositionLimit,
    RepeatedExecutions,
    Scope,
    StopStep,
    Trigger,
    reason_code,
    scope_id,
)

S = Scope(strategy="mm")
ORDER_MM = Scope(account="A1", strategy="mm", symbol_id=7, venue="XEUR")
ORDER_ARB = Scope(account="A1", strategy="arb", symbol_id=7, venue="XEUR")


@pytest.fixture
def logdir(tmp_path):
    return tmp_path / "audit"


@pytest.fixture
def logger(logdir):
    lg = AuditLogger(logdir)
    yield lg
    lg.close()


def make_ks(logger, config=None, **kw):
    return KillSwitch(logger, latency_monitor=False, config=config or default_config(), **kw)


def records(logger, kind=None):
    assert logger.flush(5.0)
    recs = list(read_audit_log(logger.directory))
    if kind is not None:
        recs = [r for r in recs if r.kind == kind]
    return sorted(recs, key=lambda r: r.seq)


def texts(logger):
    """{attached seq: text} of every TEXT record."""
    chunks: dict[int, dict[int, str]] = {}
    for r in records(logger, RecordKind.TEXT):
        chunks.setdefault(r.c, {})[r.code] = r.text
    return {c: "".join(v[i] for i in sorted(v)) for c, v in chunks.items()}


@contextlib.contextmanager
def reopened(logdir, cls=AuditLogger):
    """A new logger and switch on an existing directory (a restart), closed afterwards."""
    lg = cls(logdir)
    try:
        yield lg, make_ks(lg)
    finally:
        lg.close()


def config_with(**kill_switch):
    return AuditConfig.from_dict({"kill_switch": kill_switch})


# ------------------------------------------------------------------------------ stop path


def test_handler_that_raises_is_audited_and_the_next_handler_still_runs(logger, caplog):
    ks = make_ks(logger)
    ran = []
    ks.add_stop_handler(lambda: ran.append("first"), name="first")

    def broken():
        raise RuntimeError("venue down")

    ks.add_stop_handler(broken)
    ks.add_stop_handler(lambda: ran.append("third"), name="third")
    with caplog.at_level(logging.ERROR, logger="killswitch_audit"):
        rep = ks.emergency_stop(KillSwitchReason.DAILY_LOSS_LIMIT, 7, 100, -5)
    assert ran == ["first", "third"]
    assert [h.ok for h in rep.handlers] == [True, False, True]
    assert "venue down" in rep.handlers[1].error
    assert "venue down" in caplog.text
    fails = records(logger, RecordKind.HANDLER_FAILURE)
    assert len(fails) == 1 and fails[0].code == 1 and fails[0].c == rep.seq
    assert "broken" in texts(logger)[fails[0].seq]
    assert ks.handler_failures == 1


def test_emergency_stop_flips_the_gate_before_the_first_handler_runs(logger):
    ks = make_ks(logger)
    seen = []
    ks.add_stop_handler(lambda: seen.append(ks.allows(ORDER_MM)))
    ks.emergency_stop("manual")
    assert seen == [False]


def test_kill_switch_and_state_change_records_come_through_the_emergency_ring(logger):
    ks = make_ks(logger)
    rep = ks.emergency_stop("DAILY_LOSS_LIMIT", 7, 250, -123_456)
    (k,) = records(logger, RecordKind.KILL_SWITCH)
    (s,) = records(logger, RecordKind.STATE_CHANGE)
    assert k.seq == rep.seq and k.flags & REC_FLAG_EMERGENCY and s.flags & REC_FLAG_EMERGENCY
    assert (k.code, k.symbol_id, k.a, k.b, k.c) == (1, 7, 250, -123_456, 0)
    assert (s.code, s.a, s.b, s.c) == (int(TradingState.HALTED), 0, 1, 0)
    assert s.seq == k.seq + 1


def test_stop_steps_are_recorded_with_increasing_times(logger):
    ks = make_ks(logger)
    ks.add_stop_handler(lambda: None)
    ks.add_stop_handler(lambda: time.sleep(0.002))
    rep = ks.emergency_stop("manual", wait_durable=2.0)
    steps = {r.code: r for r in records(logger, RecordKind.STOP_STEP) if r.c == rep.seq}
    order = [
        StopStep.BLOCKED,
        StopStep.HANDLER_BASE,
        StopStep.HANDLER_BASE + 1,
        StopStep.HANDLERS_DONE,
        StopStep.DURABLE,
    ]
    assert sorted(steps) == sorted(order)
    times = [steps[c].a for c in order]
    assert times == sorted(times)
    assert steps[StopStep.HANDLER_BASE + 1].a - steps[StopStep.HANDLER_BASE].a >= 2_000_000
    assert steps[StopStep.HANDLER_BASE + 1].b >= 2_000_000  # the handler's own time
    assert steps[StopStep.BLOCKED].a <= steps[StopStep.BLOCKED].b  # blocked, then audited
    assert rep.trigger_to_block_ns <= rep.trigger_to_handlers_done_ns
    assert rep.trigger_to_handlers_done_ns == steps[StopStep.HANDLERS_DONE].a
    assert rep.durable is True and rep.ok


def test_emergency_stop_never_raises_even_with_a_closed_logger(logdir):
    lg = AuditLogger(logdir)
    ks = make_ks(lg)
    ran = []
    ks.add_stop_handler(lambda: ran.append(1))
    lg.close()
    rep = ks.emergency_stop("manual", wait_durable=0.5)
    assert ran == [1]
    assert not ks.allows(ORDER_MM)  # the gate holds although nothing could be audited
    assert rep.seq == -1 and not rep.ok
    assert any("closed" in e for e in rep.errors)
    assert ks.audit_failures >= 1


def test_emergency_stop_never_raises_on_bad_arguments_and_keeps_the_record(logger):
    ks = make_ks(logger)
    rep = ks.emergency_stop(object(), symbol_id=-1, position_size=1 << 70, pnl_cents="x")
    assert rep.seq >= 0 and rep.errors
    (k,) = records(logger, RecordKind.KILL_SWITCH)
    assert k.code == int(KillSwitchReason.OTHER) and (k.symbol_id, k.a, k.b) == (0, 0, 0)
    rep = ks.emergency_stop("manual", scope="not a scope")
    assert ks.trading_state() == TradingState.HALTED  # a bad scope fails closed: the firm
    assert any("bad scope" in e for e in rep.errors)


def test_handler_raising_base_exception_does_not_escape(logger):
    ks = make_ks(logger)
    ran = []

    def exits():
        raise SystemExit(3)

    ks.add_stop_handler(exits)
    ks.add_stop_handler(lambda: ran.append(1))
    rep = ks.emergency_stop("manual")
    assert ran == [1] and not rep.handlers[0].ok


def test_reason_strings_map_to_the_enum_in_any_case():
    assert reason_code("daily_loss_limit") == (int(KillSwitchReason.DAILY_LOSS_LIMIT), None)
    assert reason_code("Daily_Loss_Limit") == (int(KillSwitchReason.DAILY_LOSS_LIMIT), None)
    assert reason_code(" position limit ") == (int(KillSwitchReason.POSITION_LIMIT), None)
    assert reason_code(KillSwitchReason.DRAWDOWN) == (int(KillSwitchReason.DRAWDOWN), None)
    assert reason_code(4) == (4, None)
    assert reason_code(True) == (int(KillSwitchReason.OTHER), "True")
    assert reason_code(70_000) == (int(KillSwitchReason.OTHER), "70000")


def test_unknown_reason_maps_to_other_and_its_text_is_kept_and_counted(logger):
    ks = make_ks(logger)
    rep = ks.emergency_stop("fat finger on desk 3")
    ks.emergency_stop("fat finger on desk 3")
    (k1, _k2) = records(logger, RecordKind.KILL_SWITCH)
    assert k1.code == int(KillSwitchReason.OTHER) == rep.reason
    assert texts(logger)[rep.seq] == "reason:fat finger on desk 3"
    assert ks.unknown_reasons["fat finger on desk 3"] == 2


def test_concurrent_triggers_from_many_threads_are_all_audited(logger):
    ks = make_ks(logger)
    calls = []
    ks.add_stop_handler(lambda: calls.append(1))
    n_threads, per = 8, 50
    barrier = threading.Barrier(n_threads)
    seqs: list[int] = []

    def worker(i):
        barrier.wait()
        for j in range(per):
            seqs.append(ks.emergency_stop("manual", symbol_id=i, position_size=j).seq)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    ks_recs = records(logger, RecordKind.KILL_SWITCH)
    assert len(ks_recs) == n_threads * per == len(calls)
    assert sorted(r.seq for r in ks_recs) == sorted(seqs)
    assert {(r.symbol_id, r.a) for r in ks_recs} == {
        (i, j) for i in range(n_threads) for j in range(per)
    }
    assert verify_audit_log(logger.directory).ok


def test_trigger_while_halted_is_audited_again_and_reruns_handlers(logger):
    ks = make_ks(logger)
    calls = []
    ks.add_stop_handler(lambda: calls.append(1))
    ks.emergency_stop("manual")
    ks.emergency_stop("daily_loss_limit")
    assert len(calls) == 2
    changes = records(logger, RecordKind.STATE_CHANGE)
    assert [(r.a, r.code) for r in changes] == [(0, 2), (2, 2)]


def test_emergency_stop_latency_is_recorded_in_the_monitor(logger):
    from killswitch_audit.monitor import LatencyMonitor

    mon = LatencyMonitor(default_config())
    try:
        ks = KillSwitch(logger, mon, default_config())
        for _ in range(5):
            ks.emergency_stop("manual")
        assert mon.get_analysis("emergency_stop")["count"] == 5
        assert mon.get_analysis("kill_switch_audit")["count"] == 5
    finally:
        mon.close()


# ------------------------------------------------------------------------------ scopes and gate


def test_halting_a_strategy_blocks_it_and_nothing_else(logger):
    ks = make_ks(logger)
    ks.emergency_stop("manual", scope=S)
    assert not ks.allows(ORDER_MM)
    assert ks.allows(ORDER_ARB)
    assert ks.allows(None)
    assert ks.trading_state(ORDER_MM) == TradingState.HALTED
    assert ks.trading_state(ORDER_ARB) == TradingState.ACTIVE
    assert ks.trading_state() == TradingState.ACTIVE and ks.halted
    (k,) = records(logger, RecordKind.KILL_SWITCH)
    assert k.c == scope_id(S) != 0


def test_a_firm_halt_blocks_every_order(logger):
    ks = make_ks(logger)
    ks.emergency_stop("manual")
    for order in (ORDER_MM, ORDER_ARB, None, Scope(venue="XNAS"), Scope(symbol_id=1)):
        assert not ks.allows(order)
        assert not ks.allows(order, reduces_position=True)


def test_reducing_lets_only_position_reducing_orders_through(logger):
    ks = make_ks(logger)
    ran = []
    ks.add_stop_handler(lambda: ran.append(1))
    ks.reduce_only("risk_system", scope=Scope(account="A1"))
    assert ran == []  # reduce-only does not run the stop handlers
    assert not ks.allows(ORDER_MM)
    assert ks.allows(ORDER_MM, reduces_position=True)
    assert ks.allows(Scope(account="A2", strategy="mm"))
    assert ks.trading_state(ORDER_MM) == TradingState.REDUCING
    (s,) = records(logger, RecordKind.STATE_CHANGE)
    assert s.code == int(TradingState.REDUCING)


def test_reduce_only_never_lifts_a_halt(logger):
    ks = make_ks(logger)
    ks.emergency_stop("manual", scope=S)
    ks.reduce_only("manual", scope=S)
    assert not ks.allows(ORDER_MM, reduces_position=True)


def test_combined_scope_covers_only_orders_matching_every_field(logger):
    ks = make_ks(logger)
    ks.emergency_stop("manual", scope=Scope(account="A1", venue="XEUR"))
    assert not ks.allows(ORDER_MM) and not ks.allows(ORDER_ARB)
    assert ks.allows(Scope(account="A1", strategy="mm", symbol_id=7, venue="XNAS"))
    assert ks.allows(Scope(account="A2", strategy="mm", symbol_id=7, venue="XEUR"))


def test_symbol_scope_halt_and_most_restrictive_state_wins(logger):
    ks = make_ks(logger)
    ks.reduce_only("manual", scope=Scope(account="A1"))
    ks.emergency_stop("manual", scope=Scope(symbol_id=7))
    assert not ks.allows(ORDER_MM, reduces_position=True)  # symbol 7 halted beats REDUCING
    other = Scope(account="A1", strategy="mm", symbol_id=8, venue="XEUR")
    assert ks.allows(other, reduces_position=True) and not ks.allows(other)


def test_core_gate_agrees_with_the_scope_rule_on_every_order(logger):
    """The Rust gate against the rule stated in Python (`Scope.covers`, most restrictive
    covering state wins), over random stops, reduce-onlys and resets."""
    import itertools
    import random

    rng = random.Random(5)
    values = {
        "account": [None, "A1", "A2"],
        "strategy": [None, "mm", "arb"],
        "symbol_id": [None, 7, 8],
        "venue": [None, "XEUR", "XNAS"],
    }
    orders = [Scope(*v) for v in itertools.product(*values.values())]
    ks = make_ks(logger, restore=False)
    model: dict[Scope, int] = {}
    for _round in range(12):
        scope = Scope(*(rng.choice(v) for v in values.values()))
        action = rng.choice(["stop", "reduce", "reset"])
        if action == "stop":
            ks.emergency_stop("manual", scope=scope)
            model[scope] = 2
        elif action == "reduce":
            ks.reduce_only("manual", scope=scope)
            model[scope] = max(model.get(scope, 0), 1)
        elif scope in model:
            ks.reset("alice", "test", scope=scope)
            del model[scope]
        assert {s: int(v) for s, v in ks.halted_scopes.items()} == model
        for order in [*orders, None]:
            want = max([st for s, st in model.items() if s.covers(order)], default=0)
            for reducing in (False, True):
                expected = want == 0 or (want == 1 and reducing)
                assert ks.allows(order, reducing) == expected, (order, model)


def test_native_gate_rejects_what_is_not_a_scope(logger):
    ks = make_ks(logger)
    ks.emergency_stop("manual", scope=S)
    with pytest.raises(TypeError):
        ks.allows(("A1", "mm", 7))
    with pytest.raises(TypeError):
        ks.allows("mm")


def test_denials_are_counted_and_audited_rate_limited(logger):
    ks = make_ks(logger)
    ks.emergency_stop("manual", scope=S)
    for _ in range(10_000):
        assert not ks.allows(ORDER_MM)
    assert ks.denials == 10_000
    denied = records(logger, RecordKind.ORDER_DENIED)
    assert 1 <= len(denied) <= 3  # rate-limited: not one record per denial
    assert denied[0].c == scope_id(S) and denied[0].symbol_id == 7 and denied[0].a >= 1
    time.sleep(0.11)
    ks.allows(ORDER_MM)
    denied = records(logger, RecordKind.ORDER_DENIED)
    assert sum(r.a for r in denied) == 10_001  # the count since the previous record


def test_scope_text_round_trips_and_scope_ids_are_stable():
    s = Scope(account="a;b=c%", strategy="mm", symbol_id=7, venue="XEUR")
    assert Scope.parse(s.text) == s
    assert Scope.parse("firm") == Scope()
    assert scope_id(Scope()) == 0
    assert scope_id(s) == scope_id(
        Scope(account="a;b=c%", strategy="mm", symbol_id=7, venue="XEUR")
    )
    digest = hashlib.blake2b(b"strategy=mm", digest_size=8).digest()
    assert scope_id(Scope(strategy="mm")) == int.from_bytes(digest, "little")  # stable: no salt
    with pytest.raises(TypeError):
        Scope(symbol_id="7")
    with pytest.raises(ValueError):
        Scope(symbol_id=-1)


# ------------------------------------------------------------------------------ reset


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


# ------------------------------------------------------------------------------ triggers


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


# ------------------------------------------------------------------------------ restore


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


# ------------------------------------------------------------------------------ clock


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


# ------------------------------------------------------------------------------ cost


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
