"""Scoped halts and the order gate: a scope blocks its orders and nothing else, reduce-only
lets position-reducing orders through, the most restrictive state wins, the core gate agrees
with the scope rule, denials are counted and audited."""

from __future__ import annotations

import hashlib
import time

import pytest
from killswitch_audit import (
    RecordKind,
    TradingState,
)
from killswitch_audit.killswitch import (
    Scope,
    scope_id,
)
from killswitch_support import (
    ORDER_ARB,
    ORDER_MM,
    S,
    make_ks,
    records,
)


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
