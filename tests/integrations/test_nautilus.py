"""NautilusTrader with the kill switch, on the real `nautilus_trader` from PyPI: backtests
on generated bars (`make test-integrations`; skipped when the package is not installed)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

pytest.importorskip(
    "nautilus_trader", reason="nautilus_trader not installed (make test-integrations)"
)

import killswitch_audit
from integ_auditlog import AuditLog
from killswitch_audit import (
    AuditConfig,
    AuditLogger,
    KillSwitch,
    KillSwitchReason,
    LossLimit,
    RecordKind,
    Scope,
    TradingState,
)
from killswitch_audit.integrations import GATE_CHECK, OUTCOME_DENIED
from killswitch_audit.integrations.nautilus import install_kill_switch
from killswitch_audit.killswitch import StopStep
from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
from nautilus_trader.config import LoggingConfig, StrategyConfig
from nautilus_trader.model.currencies import USD
from nautilus_trader.model.data import Bar, BarType
from nautilus_trader.model.enums import (
    AccountType,
    OmsType,
    OrderSide,
    OrderStatus,
)
from nautilus_trader.model.enums import TradingState as NTradingState
from nautilus_trader.model.identifiers import TraderId, Venue
from nautilus_trader.model.objects import Money, Quantity
from nautilus_trader.test_kit.providers import TestInstrumentProvider
from nautilus_trader.trading.strategy import Strategy

# the operator's shell runs the same killswitch_audit this test imported
PACKAGE_PATH = str(Path(killswitch_audit.__file__).resolve().parents[1])
TRADER = "TESTER-001"
STRATEGY = "Loser-001"
BAR_TYPE = "AUD/USD.SIM-1-MINUTE-LAST-EXTERNAL"


class Loser(Strategy):
    """Buys 10k every 5th bar into a market that only falls, and keeps one resting limit
    buy far below the market (the open order a halt must cancel). `on_bar_hook` lets a test
    act at a given bar."""

    def __init__(self, instrument, on_bar_hook=None):
        super().__init__(StrategyConfig(order_id_tag="001"))
        self.instrument = instrument
        self.bars = 0
        self.denied: list = []
        self.hook = on_bar_hook

    def on_start(self):
        self.subscribe_bars(BarType.from_str(BAR_TYPE))

    def on_bar(self, bar):
        self.bars += 1
        i = self.instrument
        if self.bars % 5 == 1:
            self.submit_order(self.order_factory.market(i.id, OrderSide.BUY, i.make_qty(10_000)))
        if not self.cache.orders_open(instrument_id=i.id, strategy_id=self.id):
            price = i.make_price(float(bar.close) - 0.01)
            self.submit_order(
                self.order_factory.limit(i.id, OrderSide.BUY, i.make_qty(10_000), price)
            )
        if self.hook is not None:
            self.hook(self)

    def on_order_denied(self, event):
        self.denied.append(event)


def make_engine(n_bars: int, step: float = 0.0002):
    engine = BacktestEngine(
        BacktestEngineConfig(trader_id=TraderId(TRADER), logging=LoggingConfig(log_level="ERROR"))
    )
    engine.add_venue(
        venue=Venue("SIM"),
        oms_type=OmsType.NETTING,
        account_type=AccountType.MARGIN,
        base_currency=USD,
        starting_balances=[Money(1_000_000, USD)],
    )
    inst = TestInstrumentProvider.default_fx_ccy("AUD/USD")
    engine.add_instrument(inst)
    bar_type = BarType.from_str(BAR_TYPE)
    t0 = 1_704_153_600_000_000_000  # 2024-01-02T00:00Z
    bars, p = [], 0.70000
    for k in range(n_bars):  # a market that falls `step` every minute
        c = p - step
        ts = t0 + k * 60_000_000_000
        bars.append(
            Bar(
                bar_type,
                inst.make_price(p),
                inst.make_price(p + 0.00005),
                inst.make_price(c - 0.00005),
                inst.make_price(c),
                Quantity.from_int(1_000_000),
                ts,
                ts,
            )
        )
        p = c
    engine.add_data(bars)
    return engine, inst


def make_switch(log_dir: Path, triggers, control: Path | None = None):
    cfg = {"control": {"directory": str(control)}} if control is not None else {}
    logger = AuditLogger(log_dir, segment_size_mb=1, emergency_buffer_size=1024)
    ks = KillSwitch(
        logger,
        latency_monitor=False,
        config=AuditConfig.from_dict(cfg),
        triggers=triggers,
        check_clock=False,
    )
    return logger, ks


def test_loss_limit_halts_cancels_open_orders_and_denies_every_order_after(tmp_path):
    engine, inst = make_engine(300)
    strategy = Loser(inst)
    engine.add_strategy(strategy)
    scope = Scope(strategy=STRATEGY)
    logger, ks = make_switch(tmp_path / "log", [LossLimit(50_000, scope=scope)])
    try:
        guard = install_kill_switch(engine, ks, pump_interval=timedelta(minutes=1), audit_sent=True)
        engine.run()
        orders = sorted(engine.cache.orders(), key=lambda o: o.ts_init)
        risk_state = engine.kernel.risk_engine.trading_state
    finally:
        engine.dispose()
        if ks.control is not None:
            ks.control.close()
        logger.close()

    # the halt: the strategy's scope, not the node (the RiskEngine's mirror stays ACTIVE)
    assert ks.trading_state(Scope(TRADER, STRATEGY, None, "SIM")) == TradingState.HALTED
    assert ks.trading_state(Scope(account=TRADER)) == TradingState.ACTIVE
    assert risk_state == NTradingState.ACTIVE
    assert strategy.bars == 300  # a strategy-scope halt does not stop the node

    # no order passed after the halt: the first denied order splits the run in two
    statuses = [o.status for o in orders]
    first = statuses.index(OrderStatus.DENIED)
    assert first > 0
    assert all(s == OrderStatus.DENIED for s in statuses[first:]), statuses[first:]
    halted_at = orders[first].ts_init
    fills = [f for f in engine_fills(orders) if f.ts_event > halted_at]
    assert fills == []
    # the resting limit order at the halt was cancelled by the kill switch
    cancelled = [o for o in orders if o.status == OrderStatus.CANCELED]
    assert len(cancelled) == 1 == guard.cancelled
    assert not any(o.is_open for o in orders)

    denied_ids = {o.client_order_id.value for o in orders[first:]}
    assert len(strategy.denied) == len(denied_ids) == guard.denied == ks.denials
    assert all("kill switch: HALTED" in e.reason for e in strategy.denied)

    log = AuditLog(tmp_path / "log")
    kills = log.of(RecordKind.KILL_SWITCH)
    assert len(kills) == 1
    kill = kills[0]
    assert kill.reason_code == KillSwitchReason.DAILY_LOSS_LIMIT
    assert kill.scope_id == scope.scope_id
    assert kill.pnl_cents <= -50_000
    # the stop steps: gate blocked, the Nautilus handler, all handlers done
    steps = {r.code for r in log.of(RecordKind.STOP_STEP) if r.c == kill.seq}
    assert {StopStep.BLOCKED, StopStep.HANDLER_BASE, StopStep.HANDLERS_DONE} <= steps
    cancels = log.of(RecordKind.ORDER_CANCELLED)
    assert [log.text(r).split()[3] for r in cancels] == [cancelled[0].client_order_id.value]
    # every denial, one record each, naming the order
    checks = [r for r in log.of(RecordKind.RISK_CHECK) if r.code == GATE_CHECK]
    assert all(r.c == OUTCOME_DENIED and r.a == int(TradingState.HALTED) for r in checks)
    assert {log.text(r).split()[2] for r in checks} == denied_ids
    assert len(checks) == len(denied_ids)
    assert all(r.seq > kill.seq for r in checks)
    # with audit_sent, every order let through has its ORDER_SENT, none after the halt
    sent = log.of(RecordKind.ORDER_SENT)
    assert len(sent) == guard.passed == first
    assert [log.text(r).split()[2] for r in sent] == [
        o.client_order_id.value for o in orders[:first]
    ]
    assert all(r.seq < kill.seq for r in sent)


def engine_fills(orders):
    from nautilus_trader.model.events import OrderFilled

    return [e for o in orders for e in o.events if isinstance(e, OrderFilled)]


def test_operator_halt_through_control_plane_stops_a_running_backtest(tmp_path):
    from killswitch_audit.control import init_directory

    control = tmp_path / "control"
    init_directory(control)
    n_bars = 20_000  # up to ~40 s of wall time for the halt to land (it takes well under 1 s)
    halt: dict = {}

    def at_bar(strategy):
        # at bar 20, an operator halts the firm from a shell; the backtest goes on (a real
        # process) until the halt lands, a few ms of wall time per bar
        if strategy.bars == 20:
            halt["proc"] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "killswitch_audit",
                    "halt",
                    "--control",
                    str(control),
                    "--operator",
                    "alice",
                    "--reason",
                    "runaway backtest",
                    "--wait",
                    "20",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=dict(os.environ, PYTHONPATH=PACKAGE_PATH),
            )
        elif strategy.bars > 20:
            time.sleep(0.002)

    engine, inst = make_engine(n_bars, step=0.00001)
    strategy = Loser(inst, at_bar)
    engine.add_strategy(strategy)
    logger, ks = make_switch(tmp_path / "log", [], control=control)
    assert ks.control is not None, "the switch did not join the control plane"
    try:
        guard = install_kill_switch(engine, ks, pump_interval=timedelta(minutes=1))
        engine.run()
        orders = list(engine.cache.orders())
        risk_state = engine.kernel.risk_engine.trading_state
    finally:
        proc = halt.get("proc")
        if proc is not None:
            try:
                out, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
        engine.dispose()
        ks.control.close()
        logger.close()

    assert proc.returncode == 0, (out, err)
    assert 20 < strategy.bars < n_bars, "the backtest was not stopped by the halt"
    assert ks.trading_state(None) == TradingState.HALTED
    assert risk_state == NTradingState.HALTED  # mirrored into Nautilus
    assert guard.deferred >= 1  # the halt arrived on the control plane's thread
    assert guard.cancelled >= 1
    assert not any(o.is_open for o in orders)

    log = AuditLog(tmp_path / "log")
    kills = log.of(RecordKind.KILL_SWITCH)
    assert len(kills) == 1 and kills[0].reason_code == KillSwitchReason.MANUAL
    assert "alice" in log.text(kills[0]) and "runaway backtest" in log.text(kills[0])
    assert len(log.of(RecordKind.ORDER_CANCELLED)) == guard.cancelled
    checks = [r for r in log.of(RecordKind.RISK_CHECK) if r.code == GATE_CHECK]
    assert len(checks) == guard.denied == len([o for o in orders if o.status == OrderStatus.DENIED])


def run_loser(tmp_path, triggers, n_bars=300, step=0.0002, hook=None, **options):
    """One backtest of `Loser` with the kill switch installed; returns what the tests read."""
    engine, inst = make_engine(n_bars, step=step)
    strategy = Loser(inst, hook)
    engine.add_strategy(strategy)
    logger, ks = make_switch(tmp_path / "log", triggers)
    strategy.ks = ks
    try:
        guard = install_kill_switch(engine, ks, pump_interval=timedelta(minutes=1), **options)
        engine.run()
        orders = sorted(engine.cache.orders(), key=lambda o: o.ts_init)
        positions = list(engine.cache.positions())
        risk_state = engine.kernel.risk_engine.trading_state
    finally:
        engine.dispose()
        logger.close()
    return strategy, ks, guard, orders, positions, risk_state, AuditLog(tmp_path / "log")


def test_reduce_only_passes_under_reducing_and_increases_are_denied(tmp_path):
    from nautilus_trader.model.enums import OrderSide as Side

    scope = Scope(strategy=STRATEGY)

    def at_bar(strategy):
        i = strategy.instrument
        if strategy.bars == 7:  # the node's own thread, mid-run
            strategy.ks.reduce_only("risk desk", scope=scope)
        elif strategy.bars == 8:
            strategy.submit_order(
                strategy.order_factory.market(i.id, Side.SELL, i.make_qty(20_000), reduce_only=True)
            )

    strategy, ks, guard, orders, positions, risk_state, log = run_loser(
        tmp_path, [], n_bars=30, step=0.0, hook=at_bar
    )
    assert ks.trading_state(Scope(TRADER, STRATEGY, None, "SIM")) == TradingState.REDUCING
    assert risk_state == NTradingState.ACTIVE  # the node is not restricted, one strategy is
    reducing = [o for o in orders if o.is_reduce_only]
    assert len(reducing) == 1 and reducing[0].status == OrderStatus.FILLED
    assert all(not p.is_open for p in positions)  # the two buys of 10k are flat again
    denied = [o for o in orders if o.status == OrderStatus.DENIED]
    assert denied and all(not o.is_reduce_only for o in denied)
    assert all(e.reason.startswith("kill switch: REDUCING") for e in strategy.denied)
    # REDUCING runs no stop handler: the resting limit order stays, nothing was cancelled
    assert guard.cancelled == 0
    checks = [r for r in log.of(RecordKind.RISK_CHECK) if r.code == GATE_CHECK]
    assert len(checks) == len(denied)
    assert all(r.a == int(TradingState.REDUCING) for r in checks)


def test_flatten_on_halt_closes_the_position_through_the_gate(tmp_path):
    scope = Scope(strategy=STRATEGY)
    _strategy, ks, guard, orders, positions, _, _log = run_loser(
        tmp_path, [LossLimit(50_000, scope=scope)], flatten_on_halt=True
    )
    assert ks.trading_state(Scope(TRADER, STRATEGY, None, "SIM")) == TradingState.HALTED
    assert guard.flattened == 1
    flatten = [o for o in orders if o.is_reduce_only]
    assert len(flatten) == 1 and flatten[0].status == OrderStatus.FILLED
    assert all(not p.is_open for p in positions)
    # every other order after the halt was denied
    first = next(k for k, o in enumerate(orders) if o.status == OrderStatus.DENIED)
    later = [o for o in orders[first:] if not o.is_reduce_only]
    assert later and all(o.status == OrderStatus.DENIED for o in later)


def test_position_limit_trips_on_the_net_position_of_its_scope(tmp_path):
    from killswitch_audit import PositionLimit
    from killswitch_audit.integrations import symbol_id_for

    scope = Scope(strategy=STRATEGY)
    _, _ks, _, _orders, _, _, log = run_loser(
        tmp_path, [PositionLimit(25_000, scope=scope)], n_bars=40, step=0.0
    )
    kills = log.of(RecordKind.KILL_SWITCH)
    assert len(kills) == 1
    assert kills[0].reason_code == KillSwitchReason.POSITION_LIMIT
    assert kills[0].position_size == 30_000  # the third 10k buy crossed 25k
    assert kills[0].symbol_id == symbol_id_for("AUD/USD.SIM")
    assert kills[0].scope_id == scope.scope_id


def test_a_trigger_of_another_strategy_does_not_see_this_strategys_loss(tmp_path):
    other = Scope(strategy="Other-001")
    _, _ks, guard, orders, _, _, log = run_loser(tmp_path, [LossLimit(50_000, scope=other)])
    assert log.of(RecordKind.KILL_SWITCH) == []
    assert guard.denied == 0
    assert not any(o.status == OrderStatus.DENIED for o in orders)


def test_a_check_that_cannot_run_denies_the_order(tmp_path):
    # a symbol id out of Scope's range: the scope cannot be built, so nothing may leave
    strategy, _ks, guard, orders, positions, _, _log = run_loser(
        tmp_path, [], n_bars=10, symbol_ids={"AUD/USD.SIM": -1}
    )
    assert orders and all(o.status == OrderStatus.DENIED for o in orders)
    assert all("check failed" in e.reason for e in strategy.denied)
    assert guard.passed == 0 and positions == []


def test_the_mirror_never_lifts_nautilus_own_restriction_and_a_disposed_node_is_left_alone(
    tmp_path,
):
    engine, inst = make_engine(10, step=0.0)
    engine.add_strategy(Loser(inst))
    logger, ks = make_switch(tmp_path / "log", [])
    try:
        guard = install_kill_switch(engine, ks, pump_interval=timedelta(minutes=1))
        # an operator's own REDUCING on the RiskEngine: the switch (ACTIVE) must not lift it
        engine.kernel.risk_engine.set_trading_state(NTradingState.REDUCING)
        engine.run()
        assert engine.kernel.risk_engine.trading_state == NTradingState.REDUCING
        assert guard.passed > 0
    finally:
        engine.dispose()
    try:
        # the switch outlives the node: a later halt runs the actor's handler as a no-op
        report = ks.emergency_stop("after the node", scope=None)
        assert report.handlers and all(h.ok for h in report.handlers), report.handlers
        assert ks.handler_failures == 0
    finally:
        logger.close()
