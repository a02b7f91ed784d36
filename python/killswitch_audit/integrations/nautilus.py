"""The kill switch inside NautilusTrader (extra `[nautilus]`; docs/INTEGRATIONS.md).

    from killswitch_audit import KillSwitch, LossLimit, Scope
    from killswitch_audit.integrations.nautilus import install_kill_switch

    ks = KillSwitch(logger, triggers=[LossLimit(50_000, scope=Scope(strategy="EMACross-001"))])
    guard = install_kill_switch(engine, ks)      # a BacktestEngine or a TradingNode
    engine.run()

What this module owns:

- **the gate at the door**: `install_kill_switch` puts `KillSwitchActor.execute` in front of
  the execution engine's `ExecEngine.execute` endpoint, the one door every command to a venue
  goes through (after the RiskEngine, its throttler and the OrderEmulator). A SubmitOrder /
  SubmitOrderList passes only when `ks.allows(scope, reduces_position=order.is_reduce_only)`
  with the scope `Scope(account=trader_id, strategy=strategy_id, symbol_id=<instrument>,
  venue=<venue>)`; a denied one is denied through Nautilus's own path (the RiskEngine's
  `_deny_order`: an OrderDenied event the strategy sees) and audited, one RISK_CHECK record
  and its TEXT per denied order. A ModifyOrder under a restriction passes only when it does
  not increase the quantity (REDUCING) and never under HALTED. Cancels always pass.
- **triggers from Nautilus events**: fills (`on_fill`, RepeatedExecutions), orders sent
  (`on_order`, MessageRate), net positions (`on_position`, PositionLimit) and P&L (realised
  plus unrealised, `on_pnl`, LossLimit / Drawdown), each trigger fed the values of the
  orders its own scope covers (a LossLimit of `strategy=A` sees A's P&L only).
- **the stop**: a stop handler (audited by the switch as a step) that cancels every open order
  whose scope is HALTED through the owning strategy's `cancel_all_orders`, optionally
  flattens with `close_all_positions` (reduce-only market orders, let through by the gate for
  that call only), mirrors the node's state into the RiskEngine's `TradingState`, and, when a
  halt covers the whole node (firm or `account=<trader id>`), shuts the node down
  (`shutdown_system`: a backtest stops at the next event, a live node stops).
- **the control plane**: a halt published by an operator (`killswitch-audit halt`) reaches
  the switch on its watcher thread; the gate closes at once there, and the Nautilus-side work
  (commands may only be issued on the node's thread) is handed to the node's thread: the
  event loop when there is one, else the next command at the door or the actor's pump timer.

Nautilus's own TradingState is node-wide, not latched, unaudited and without operator or
reason; the switch stays the source of truth and the RiskEngine's state is a mirror of it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from datetime import timedelta
from typing import Any, Callable, Optional

try:
    from nautilus_trader.common.actor import Actor
    from nautilus_trader.config import ActorConfig
    from nautilus_trader.execution.messages import ModifyOrder, SubmitOrder, SubmitOrderList
    from nautilus_trader.model.enums import OrderStatus, PriceType
    from nautilus_trader.model.enums import TradingState as NautilusTradingState
    from nautilus_trader.model.events import (
        OrderFilled,
        PositionChanged,
        PositionClosed,
        PositionOpened,
    )
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "killswitch_audit.integrations.nautilus needs NautilusTrader: "
        "pip install 'killswitch-audit[nautilus]'"
    ) from e

from ..format import RecordKind, TradingState
from ..killswitch.scope import Scope
from . import audit_decision, audit_text, symbol_id_for

__all__ = ["KillSwitchActor", "install_kill_switch"]

log = logging.getLogger("killswitch_audit.integrations.nautilus")

_K_ORDER_CANCELLED = int(RecordKind.ORDER_CANCELLED)
_K_ORDER_SENT = int(RecordKind.ORDER_SENT)
_HALTED = int(TradingState.HALTED)
_ACTIVE = int(TradingState.ACTIVE)
_TO_NAUTILUS = {
    int(TradingState.ACTIVE): NautilusTradingState.ACTIVE,
    int(TradingState.REDUCING): NautilusTradingState.REDUCING,
    int(TradingState.HALTED): NautilusTradingState.HALTED,
}
#: how restrictive each of Nautilus's states is
_RANK = {
    NautilusTradingState.ACTIVE: 0,
    NautilusTradingState.REDUCING: 1,
    NautilusTradingState.HALTED: 2,
}
_ENDPOINT = "ExecEngine.execute"
_PRICE_TYPES = (PriceType.MID, PriceType.LAST, PriceType.BID, PriceType.ASK)


def _order_id(client_order_id: str) -> int:
    """A 63-bit id of a client order id for the `c` field of ORDER_SENT/ORDER_CANCELLED (the
    full id is in the TEXT attached to the record)."""
    d = hashlib.blake2b(client_order_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(d, "little") & 0x7FFF_FFFF_FFFF_FFFF


def _cents(money: Any) -> float:
    return 0.0 if money is None else float(money.as_double()) * 100.0


class KillSwitchActor(Actor):
    """The kill switch as a Nautilus component (see the module doc). Build it with
    `install_kill_switch`; the constructor alone does not put the gate at the door.

    `flatten_on_halt`: also close the positions of a halted scope (reduce-only market orders).
    `stop_node_on_halt`: shut the node down when a halt covers the whole node.
    `symbol_ids`: instrument id text -> `Scope.symbol_id` (default `symbol_id_for`).
    `pump_interval`: how often the actor reconciles with the switch on the node's clock
    (simulated time in a backtest): mirrors the state, marks P&L to market, runs work handed
    over by the control plane's thread. None: no timer (then only events and commands pump).
    `audit_sent`: also write an ORDER_SENT record for every order let through."""

    def __init__(
        self,
        ks: Any,
        *,
        flatten_on_halt: bool = False,
        stop_node_on_halt: bool = True,
        symbol_ids: Optional[dict[str, int]] = None,
        pump_interval: Optional[timedelta] = timedelta(seconds=1),
        audit_sent: bool = False,
        component_id: str = "KillSwitch",
    ):
        super().__init__(ActorConfig(component_id=component_id))
        self.ks = ks
        self.flatten_on_halt = bool(flatten_on_halt)
        self.stop_node_on_halt = bool(stop_node_on_halt)
        self.pump_interval = pump_interval
        self.audit_sent = bool(audit_sent)
        self._symbol_ids = dict(symbol_ids or {})
        self._allows = ks.allows
        self._kernel: Any = None
        self._downstream: Optional[Callable[[Any], None]] = None
        self._risk_engine: Any = None
        self._trader_id = ""
        self._node_scope: Optional[Scope] = None
        self._node_thread: Optional[int] = None
        self._loop: Any = None
        # (strategy_id, instrument_id) -> (Scope, symbol_id); Nautilus identifiers hash in C
        self._scopes: dict[tuple[Any, Any], tuple[Scope, int]] = {}
        self._flattening = False
        self._pending = False
        self._stopping = False
        self._mirrored: Optional[int] = None
        self._restrictions: Any = None
        # P&L per (strategy_id, instrument_id) in cents: realised of closed positions
        self._closed_pnl: dict[tuple[Any, Any], float] = {}
        self._order_triggers: dict[Scope, tuple[Any, ...]] = {}
        #: counters (also in `stats()`)
        self.denied = 0
        self.passed = 0
        self.cancelled = 0
        self.flattened = 0
        self.deferred = 0
        ks.add_stop_handler(self._on_halt, name=f"nautilus:{component_id}")

    # ------------------------------------------------------------------ installation

    def install(self, kernel: Any) -> None:
        """Puts the gate in front of `ExecEngine.execute` of `kernel` (a NautilusKernel)."""
        if self._kernel is not None:
            raise RuntimeError("KillSwitchActor is already installed")
        msgbus = kernel.msgbus
        downstream = kernel.exec_engine.execute
        msgbus.deregister(_ENDPOINT, downstream)
        msgbus.register(_ENDPOINT, self.execute)
        self._kernel = kernel
        self._downstream = downstream
        self._risk_engine = kernel.risk_engine
        self._trader_id = kernel.trader_id.value
        self._node_scope = Scope(account=self._trader_id)
        try:
            self._loop = kernel.loop
        except Exception:
            self._loop = None

    def uninstall(self) -> None:
        """Gives `ExecEngine.execute` back to the execution engine."""
        if self._kernel is None:
            return
        msgbus = self._kernel.msgbus
        msgbus.deregister(_ENDPOINT, self.execute)
        msgbus.register(_ENDPOINT, self._downstream)
        self._kernel = None

    # ------------------------------------------------------------------ lifecycle

    def on_start(self) -> None:
        self._node_thread = threading.get_ident()
        self._stopping = False
        self.msgbus.subscribe(topic="events.order.*", handler=self._on_order_event)
        self.msgbus.subscribe(topic="events.position.*", handler=self._on_position_event)
        if self.pump_interval is not None:
            self.clock.set_timer(
                "killswitch-pump", self.pump_interval, callback=lambda _e: self.pump()
            )
        # a process started during a halt: the gate already denies; mirror it now
        self.pump()

    def on_dispose(self) -> None:
        # the switch outlives the node: its stop handler must not reach a disposed kernel
        self.uninstall()

    def on_stop(self) -> None:
        self.pump()  # work handed over late still runs on the node's thread
        try:
            self.msgbus.unsubscribe(topic="events.order.*", handler=self._on_order_event)
            self.msgbus.unsubscribe(topic="events.position.*", handler=self._on_position_event)
        except Exception:  # pragma: no cover - already gone at disposal
            pass
        if self.pump_interval is not None and "killswitch-pump" in self.clock.timer_names:
            self.clock.cancel_timer("killswitch-pump")

    # ------------------------------------------------------------------ the gate

    def scope_of(self, strategy_id: Any, instrument_id: Any) -> tuple[Scope, int]:
        """(Scope, symbol_id) of orders of `strategy_id` on `instrument_id`, cached."""
        key = (strategy_id, instrument_id)
        got = self._scopes.get(key)
        if got is None:
            text = instrument_id.value
            sym = self._symbol_ids.get(text)
            if sym is None:
                sym = symbol_id_for(text)
            scope = Scope(
                account=self._trader_id,
                strategy=strategy_id.value,
                symbol_id=sym,
                venue=instrument_id.venue.value,
            )
            got = (scope, sym)
            if len(self._scopes) < 100_000:
                self._scopes[key] = got
        return got

    def execute(self, command: Any) -> None:
        """The `ExecEngine.execute` endpoint: the gate, then the execution engine."""
        if self._pending:
            self.pump()
        try:
            self._gate(command)
        except Exception as e:  # fail closed: a check that cannot run denies the order
            log.critical("kill switch: checking %r failed: %r", command, e)
            if type(command) is SubmitOrder:
                self._fail_closed([command.order], e)
            elif type(command) is SubmitOrderList:
                self._fail_closed(list(command.order_list.orders), e)
            else:
                raise

    def _fail_closed(self, orders: list[Any], e: Exception) -> None:
        for order in orders:
            self.denied += 1
            if order.status == OrderStatus.INITIALIZED:
                self._risk_engine._deny_order(order, f"kill switch: check failed ({e!r})"[:200])

    def _gate(self, command: Any) -> None:
        t = type(command)
        if t is SubmitOrder:
            order = command.order
            scope, sym = self.scope_of(command.strategy_id, order.instrument_id)
            reduce_only = order.is_reduce_only
            if self._allows(scope, reduce_only) or (self._flattening and reduce_only):
                self._sent(order, scope, sym)
                self._downstream(command)
            else:
                self._deny(order, scope, sym)
        elif t is SubmitOrderList:
            orders = command.order_list.orders
            checked = [(o, *self.scope_of(command.strategy_id, o.instrument_id)) for o in orders]
            if all(self._allows(s, o.is_reduce_only) for o, s, _ in checked):
                for o, s, sym in checked:
                    self._sent(o, s, sym)
                self._downstream(command)
            else:
                for o, s, sym in checked:
                    self._deny(o, s, sym)
        elif t is ModifyOrder:
            self._modify(command)
        else:  # cancels, queries: a restriction never blocks them
            self._downstream(command)

    def _sent(self, order: Any, scope: Scope, sym: int) -> None:
        self.passed += 1
        ks = self.ks
        trig = self._order_triggers.get(scope)
        if trig is None:
            trig = tuple(t for t in ks.triggers if "order" in t.events and t.scope.covers(scope))
            self._order_triggers[scope] = trig
        if trig:
            now = self.clock.timestamp_ns()
            ks._evaluate(trig, lambda t: t.on_order(now), {"symbol_id": sym})
        if self.audit_sent:
            cid = order.client_order_id.value
            seq = ks._core.audit(
                _K_ORDER_SENT,
                0,
                sym,
                int(order.quantity.as_double()),
                _price_cents(order),
                _order_id(cid),
                False,
            )
            if seq >= 0:
                audit_text(ks, seq, f"nautilus sent {cid} {order.strategy_id.value}")

    def _deny(self, order: Any, scope: Scope, sym: int) -> None:
        """Denies `order` through Nautilus's own path and audits it (one record per order)."""
        self.denied += 1
        state = int(self.ks.trading_state(scope))
        name = TradingState(state).name
        reason = f"kill switch: {name} ({scope.text})"
        cid = order.client_order_id.value
        audit_decision(
            self.ks,
            False,
            sym,
            state,
            f"nautilus denied {cid} {order.strategy_id.value}",
            self.clock.timestamp_ns() // 1_000_000,
        )
        if order.status == OrderStatus.INITIALIZED:
            self._risk_engine._deny_order(order, reason)
        else:  # released by the emulator: nothing may go out, the order stays where it is
            log.error("kill switch denied %s (status %s): dropped", cid, order.status_string())

    def _modify(self, command: Any) -> None:
        order = self.cache.order(command.client_order_id)
        if order is None:
            self._downstream(command)
            return
        scope, sym = self.scope_of(command.strategy_id, command.instrument_id)
        grows = command.quantity is not None and command.quantity > order.quantity
        if self._allows(scope, not grows):
            self._downstream(command)
            return
        self.denied += 1
        state = int(self.ks.trading_state(scope))
        name = TradingState(state).name
        audit_decision(
            self.ks,
            False,
            sym,
            state,
            f"nautilus denied modify {order.client_order_id.value} {order.strategy_id.value}",
            self.clock.timestamp_ns() // 1_000_000,
        )
        self._risk_engine._reject_modify_order(order, f"kill switch: {name} ({scope.text})")

    # ------------------------------------------------------------------ triggers

    def _on_order_event(self, event: Any) -> None:
        if type(event) is OrderFilled:
            _, sym = self.scope_of(event.strategy_id, event.instrument_id)
            self.ks.on_fill(sym, int(event.last_qty.as_double()), self.clock.timestamp_ns())

    def _on_position_event(self, event: Any) -> None:
        t = type(event)
        if t is PositionClosed:
            key = (event.strategy_id, event.instrument_id)
            self._closed_pnl[key] = self._closed_pnl.get(key, 0.0) + _cents(event.realized_pnl)
        elif t is not PositionOpened and t is not PositionChanged:
            return
        self._feed_positions()
        self._feed_pnl()

    def pnl_cents(self) -> dict[Scope, int]:
        """Realised plus unrealised P&L per (strategy, instrument) scope, in cents of each
        instrument's settlement currency (not converted: give a scope one currency)."""
        pnl = dict(self._closed_pnl)
        for p in self.cache.positions_open():
            key = (p.strategy_id, p.instrument_id)
            v = pnl.get(key, 0.0) + _cents(p.realized_pnl)
            price = self._price(p.instrument_id)
            if price is not None:
                v += _cents(p.unrealized_pnl(price))
            pnl[key] = v
        return {self.scope_of(s, i)[0]: round(v) for (s, i), v in pnl.items()}

    def _price(self, instrument_id: Any) -> Any:
        for pt in _PRICE_TYPES:
            price = self.cache.price(instrument_id, pt)
            if price is not None:
                return price
        return None

    def _feed_pnl(self) -> None:
        ks = self.ks
        trig = [t for t in ks.triggers if "pnl" in t.events and not t.tripped]
        if not trig:
            return
        by_scope = self.pnl_cents()
        for t in trig:
            total = sum(v for s, v in by_scope.items() if t.scope.covers(s))
            ks._evaluate((t,), lambda t, v=total: t.on_pnl(v), {"pnl_cents": total})

    def _feed_positions(self) -> None:
        ks = self.ks
        trig = [t for t in ks.triggers if "position" in t.events and not t.tripped]
        if not trig:
            return
        net: dict[Scope, float] = {}
        for p in self.cache.positions_open():
            s, _ = self.scope_of(p.strategy_id, p.instrument_id)
            net[s] = net.get(s, 0.0) + float(p.signed_qty)
        for t in trig:
            per_symbol: dict[int, float] = {}
            for s, q in net.items():
                if t.scope.covers(s):
                    per_symbol[s.symbol_id] = per_symbol.get(s.symbol_id, 0.0) + q
            for sym, q in per_symbol.items():
                pos = int(q)
                ks._evaluate(
                    (t,),
                    lambda t, pos=pos, sym=sym: t.on_position(pos, sym),
                    {"position_size": pos, "symbol_id": sym},
                )

    # ------------------------------------------------------------------ the stop

    def _on_halt(self) -> None:
        """The stop handler: on the node's thread, act now; on any other thread (the control
        plane's watcher, a signal), hand the work to the node's thread."""
        if self._kernel is None:
            return
        if self._node_thread is None:  # not started: on_start applies it
            self._pending = True
            return
        if threading.get_ident() == self._node_thread:
            self._apply()
            return
        self._pending = True
        self.deferred += 1
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(self.pump)

    def pump(self) -> None:
        """Reconciles with the switch on the node's thread: runs handed-over stop work,
        mirrors a changed state, marks P&L to market."""
        if self._node_thread is not None and threading.get_ident() != self._node_thread:
            return
        try:
            restrictions = self.ks._core.restrictions()
            if self._pending or restrictions != self._restrictions:
                self._pending = False
                self._restrictions = restrictions
                self._apply()
            self._feed_pnl()
        except Exception as e:  # the gate is closed already; retry the Nautilus side next tick
            self._pending = True
            log.critical("kill switch: applying the switch's state to the node failed: %r", e)

    def _apply(self) -> None:
        """Cancels (and optionally flattens) what is HALTED, mirrors the node's state into
        the RiskEngine, and stops the node when the halt covers it. Idempotent."""
        ks = self.ks
        cancels: dict[tuple[Any, Any], list[Any]] = {}
        for order in self.cache.orders_open() + self.cache.orders_emulated():
            scope, _ = self.scope_of(order.strategy_id, order.instrument_id)
            if int(ks.trading_state(scope)) == _HALTED:
                cancels.setdefault((order.strategy_id, order.instrument_id), []).append(order)
        strategies = {s.id: s for s in self._kernel.trader.strategies()}
        for (sid, iid), orders in cancels.items():
            strategy = strategies.get(sid)
            if strategy is None:
                log.error("kill switch: no strategy %s to cancel %d orders", sid, len(orders))
                continue
            strategy.cancel_all_orders(iid)
            _, sym = self.scope_of(sid, iid)
            for o in {o.client_order_id.value: o for o in orders}.values():
                self.cancelled += 1
                cid = o.client_order_id.value
                seq = ks._core.audit(
                    _K_ORDER_CANCELLED,
                    0,
                    sym,
                    int(o.leaves_qty.as_double()),
                    _price_cents(o),
                    _order_id(cid),
                    True,
                )
                if seq >= 0:
                    ks._core.text(seq, f"nautilus kill-switch cancel {cid} strategy={sid.value}")
        if self.flatten_on_halt:
            self._flatten(strategies)
        self._mirror()
        node_state = int(ks.trading_state(self._node_scope))
        if node_state == _HALTED and self.stop_node_on_halt and not self._stopping:
            self._stopping = True
            log.critical("kill switch: the node is halted; shutting it down")
            self.shutdown_system("kill switch halt (killswitch-audit)")

    def _flatten(self, strategies: dict[Any, Any]) -> None:
        ks = self.ks
        targets = set()
        for p in self.cache.positions_open():
            scope, _ = self.scope_of(p.strategy_id, p.instrument_id)
            if int(ks.trading_state(scope)) == _HALTED:
                targets.add((p.strategy_id, p.instrument_id))
        if not targets:
            return
        risk = self._risk_engine
        before = risk.trading_state
        if before == NautilusTradingState.HALTED:
            # Nautilus's HALTED denies reduce-only orders too: let the flattening out
            risk.set_trading_state(NautilusTradingState.REDUCING)
        self._flattening = True
        try:
            for sid, iid in targets:
                strategy = strategies.get(sid)
                if strategy is not None:
                    strategy.close_all_positions(iid, reduce_only=True)
                    self.flattened += 1
        finally:
            self._flattening = False
            if before == NautilusTradingState.HALTED:
                risk.set_trading_state(NautilusTradingState.HALTED)

    def _mirror(self) -> None:
        """The RiskEngine's TradingState follows the switch's state of the whole node, but
        never lifts a restriction the actor did not set (an operator's own REDUCING/HALTED
        set on the RiskEngine stays until they lift it)."""
        state = int(self.ks.trading_state(self._node_scope))
        prev = self._mirrored
        if state == prev:
            return
        self._mirrored = state
        risk = self._risk_engine
        current = risk.trading_state
        target = _TO_NAUTILUS[state]
        ours = prev is not None and current == _TO_NAUTILUS[prev]
        if current != target and (_RANK[target] > _RANK[current] or ours):
            risk.set_trading_state(target)

    def stats(self) -> dict[str, int]:
        return {
            "passed": self.passed,
            "denied": self.denied,
            "cancelled": self.cancelled,
            "flattened": self.flattened,
            "deferred": self.deferred,
        }


def _price_cents(order: Any) -> int:
    price = getattr(order, "price", None) if order.has_price else None
    return round(float(price.as_double()) * 100) if price is not None else 0


def install_kill_switch(target: Any, ks: Any, **options: Any) -> KillSwitchActor:
    """Adds a `KillSwitchActor` (options: see the class) to a BacktestEngine or a TradingNode
    (`target.kernel`, `target.trader`) and puts its gate at the execution engine's door.
    Call it before `run()`; the switch's reason for a halt is its own (KillSwitchReason)."""
    kernel = getattr(target, "kernel", None)
    if kernel is None or not hasattr(kernel, "exec_engine"):
        raise TypeError(
            f"install_kill_switch needs a BacktestEngine or a TradingNode, not "
            f"{type(target).__name__}"
        )
    actor = KillSwitchActor(ks, **options)
    add = getattr(target, "add_actor", None) or target.trader.add_actor
    add(actor)
    actor.install(kernel)
    return actor
