"""The KillSwitch an orchestrator holds: the order gate, the stop, the audited reset and the
restore at start. The gate, the stop sequence, the latch file and restore's rules live in the
Rust core (`_native.KillSwitchCore`, `_native.restore_state`); this class adds what needs
Python: stop handlers, triggers, the report, and the waits.

    ks = KillSwitch(logger)                   # None: the global logger, monitor and config
    ks.add_stop_handler(cancel_all_orders)    # handlers must be idempotent
    if ks.allows(Scope(account="A1", strategy="mm", symbol_id=7, venue="XEUR")):
        send(order)
    ks.on_pnl(pnl_cents)                      # trips LossLimit -> emergency_stop
    ks.reset("alice", "limit raised by risk")  # audited, authenticated, with who and why

What holds (docs/COMPLIANCE.md, RELIABILITY.md):

- **emergency_stop** closes the gate before anything else, writes KILL_SWITCH + STATE_CHANGE,
  latches the halt in `halt.state` (one pwrite: survives kill -9 at once, needs no new disk
  space, works after the logger is closed), runs the stop handlers (isolated, timed), and
  returns only once its records are in the segment file (bounded by `persist_timeout_s`; a
  miss is reported, alerted, and the latch still holds the halt). It never raises: a bad
  scope halts the firm, a bad number is recorded as 0, any other failure still closes the
  gate. A stop from a stop handler or a signal handler takes no lock and never deadlocks;
  nested stops do not re-run the handlers.
- **reset** writes RESET + STATE_CHANGE, waits until the writer's hash chain covers them (so
  restore can authenticate them), and only then opens the gate, unless a stop of the scope
  arrived meanwhile (the newer halt stands, ResetRefused).
- **restore** (at start, before `allows` answers): evidence that restricts trading is
  believed wherever it is; a lift counts only when the writer's chain covers it; damage, an
  unverifiable lift or a scope that cannot be named restore as a firm restriction until an
  authenticated firm reset.

The class is the front; its jobs live beside it: stop.py (`StopMixin`: emergency_stop,
reduce_only), reset.py (`ResetMixin`: reset), restore.py (`RestoreMixin`: the restore at
start), triggers.py (`TriggerFeedMixin`: on_pnl, on_position, on_order, on_fill).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from typing import TYPE_CHECKING, Any, Optional, Union

from ..format import KillSwitchReason, TradingState
from .clock import clock_evidence
from .report import StopReport
from .reset import ResetMixin
from .restore import RestoreMixin
from .scope import FIRM, Scope, scope_key
from .stop import PERSIST_TIMEOUT_S, Handler, StopMixin
from .triggers import Trigger, TriggerFeedMixin, triggers_from_config

if TYPE_CHECKING:  # annotations only: importing these here would be circular or heavy
    from .._native import AuditLogger
    from ..config import AuditConfig
    from ..monitor import LatencyMonitor
    from ..types import ClockEvidence, KillSwitchStats

__all__ = ["DENIAL_AUDIT_INTERVAL_NS", "KillSwitch"]

log = logging.getLogger("killswitch_audit.killswitch")
alerts = logging.getLogger("killswitch_audit.alerts")

HALTED = int(TradingState.HALTED)

#: at most one ORDER_DENIED record per this many ns (the record carries the count)
DENIAL_AUDIT_INTERVAL_NS = 100_000_000


class KillSwitch(StopMixin, ResetMixin, RestoreMixin, TriggerFeedMixin):
    """The kill switch (see the module doc). `audit_logger`, `latency_monitor`, `config`: None
    takes the global logger, the global monitor and the loaded config; `latency_monitor=True`
    also takes the global monitor, `latency_monitor=False`
    records no latencies. `triggers`: None takes those the config enables. `restore=False`
    skips rebuilding the state from the log (tests only). `check_clock=False` skips the clock
    check at start. `persist_timeout_s`: how long a stop waits for its records to reach the
    file before it reports a miss. `join_control=False`: do not join the control plane the
    config names (tools that only read)."""

    def __init__(
        self,
        audit_logger: Optional[AuditLogger] = None,
        latency_monitor: Union[LatencyMonitor, bool, None] = None,
        config: Optional[AuditConfig] = None,
        *,
        triggers: Optional[list[Trigger]] = None,
        restore: bool = True,
        check_clock: bool = True,
        warm_up: bool = True,
        persist_timeout_s: float = PERSIST_TIMEOUT_S,
        join_control: bool = True,
    ):
        from .. import _native

        if config is None:
            from ..config import load_config

            config = load_config()
        self.config = config
        if audit_logger is None:
            from ..logger import get_global_audit_logger

            audit_logger = get_global_audit_logger()
        self.audit_logger = audit_logger
        if latency_monitor is None or latency_monitor is True:
            from ..monitor import get_global_latency_monitor

            latency_monitor = get_global_latency_monitor()
        elif latency_monitor is not False and not callable(
            getattr(latency_monitor, "record", None)
        ):
            raise TypeError(
                "KillSwitch: latency_monitor must be a LatencyMonitor, True/None (the global "
                f"one) or False (none), not {type(latency_monitor).__name__} {latency_monitor!r}"
            )
        self.latency_monitor = latency_monitor or None
        self._record_latency = latency_monitor.record if latency_monitor else None
        ks = config.kill_switch
        self.require_second_operator = bool(ks.reset.require_second_operator)
        self.default_wait_durable_s = float(ks.wait_durable_ms) / 1000.0
        self.clock_max_error_us = float(config.clock.max_error_us)
        self.persist_timeout_s = float(persist_timeout_s)

        directory = getattr(audit_logger, "directory", None)
        self.directory = os.fspath(directory) if directory is not None else None
        #: the native half: gate, stop sequence, latch file (`halt.state`)
        self._core = _native.KillSwitchCore(audit_logger, self.directory, DENIAL_AUDIT_INTERVAL_NS)
        if not self._core.audits and not isinstance(audit_logger, _NullLogger):
            raise TypeError(
                "KillSwitch needs a killswitch_audit AuditLogger (got "
                f"{type(audit_logger).__name__}): its records would go nowhere"
            )
        self.allows = self._core.allows  # one PyO3 call per order
        self._scopes: dict[int, Scope] = {0: FIRM}  # scope id -> Scope, for reports
        self._handlers: tuple[tuple[str, Handler], ...] = ()
        self._in_handlers = threading.local()
        self.unknown_reasons: Counter[str] = Counter()
        self.audit_failures = 0
        self.handler_failures = 0
        self.trigger_failures = 0
        self.stops = 0
        #: the StopReport of the latest emergency_stop / reduce_only
        self.last_report: Optional[StopReport] = None
        self.restore_notes: list[str] = []

        self._triggers: list[Trigger] = []
        self._by_event: dict[str, tuple[Trigger, ...]] = {
            "pnl": (),
            "position": (),
            "order": (),
            "fill": (),
        }
        for t in triggers_from_config(config) if triggers is None else triggers:
            self.add_trigger(t)

        if restore and self.directory is not None:
            self._restore(_native)
        #: membership of the control plane the config or $KILLSWITCH_AUDIT_CONTROL names
        #: (None: none named); its shared table is consulted by `allows()` from now on, so a
        #: process that starts during a halt is halted before its first answer
        self.control = None
        if join_control:
            from ..control import join

            self.control = join(self)  # attaches the plane's table to this gate
        self.clock = self.check_clock() if check_clock else None
        if warm_up:
            _warm_up_once(config)

    # ---------------------------------------------------------------- handlers and triggers

    def add_stop_handler(self, fn: Handler, name: Optional[str] = None) -> None:
        """Adds a stop handler, called with no arguments on every `emergency_stop`, after the
        gate is closed and the halt audited, in registration order. Must be idempotent."""
        if not callable(fn):
            raise TypeError(f"stop handler must be callable, not {type(fn).__name__}")
        label = (
            name or getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
        )
        self._handlers = (*self._handlers, (str(label), fn))

    def add_trigger(self, trigger: Trigger) -> Trigger:
        """Adds a trigger (evaluated by the `on_*` calls its `events` name)."""
        if not isinstance(trigger, Trigger):
            raise TypeError(f"trigger must be a Trigger, not {type(trigger).__name__}")
        self._triggers.append(trigger)
        sid, _ = scope_key(trigger.scope)  # computed now, not on the first trip
        self._scopes[sid] = trigger.scope
        for ev in trigger.events:
            self._by_event[ev] = (*self._by_event[ev], trigger)
        return trigger

    @property
    def triggers(self) -> tuple[Trigger, ...]:
        return tuple(self._triggers)

    # ---------------------------------------------------------------- state queries

    @property
    def halted(self) -> bool:
        """True while any scope is HALTED (see `halted_scopes`; the firm: `trading_state()`)."""
        return any(st == HALTED for _, st in self._core.restrictions())

    @property
    def halted_scopes(self) -> dict[Scope, TradingState]:
        """Every scope that is not ACTIVE, with its own state."""
        return {
            self._scopes.get(sid, FIRM): TradingState(st) for sid, st in self._core.restrictions()
        }

    def trading_state(self, scope: Optional[Scope] = None) -> TradingState:
        """The state orders of `scope` are under: the most restrictive state of every restricted
        scope covering it (None: the firm scope, i.e. orders with no attributes)."""
        return TradingState(self._core.state(scope))

    def allows(self, scope: Optional[Scope] = None, reduces_position: bool = False) -> bool:
        """The order gate: may an order with attributes `scope` be sent? ACTIVE: yes;
        REDUCING: only when `reduces_position`; HALTED: no. Replaced in `__init__` by the core
        gate's bound method (one PyO3 call; no lock, no allocation, no I/O). Denials are
        counted; at most one ORDER_DENIED record per `DENIAL_AUDIT_INTERVAL_NS` carries the
        count since the previous one."""
        return bool(self._core.allows(scope, reduces_position))  # pragma: no cover

    @property
    def denials(self) -> int:
        """Orders the gate has denied."""
        return int(self._core.denials)

    # ---------------------------------------------------------------- clock, stats

    def check_clock(self) -> ClockEvidence:
        """Clock evidence now (see `clock_evidence`); alerts on
        `logging.getLogger("killswitch_audit.alerts")` when unsynchronised, unknown, or over
        `clock.max_error_us`."""
        ev = clock_evidence(self.clock_max_error_us)
        if not ev["ok"]:
            alerts.warning("clock: %s", ev["message"])
        return ev

    def stats(self) -> KillSwitchStats:
        """Counters: stops, denials, handler/trigger/audit failures, unknown reasons."""
        return {
            "stops": self.stops,
            "denials": self.denials,
            "handler_failures": self.handler_failures,
            "trigger_failures": self.trigger_failures,
            "audit_failures": self.audit_failures,
            "unknown_reasons": dict(self.unknown_reasons),
            "restricted": {s.text: st.name for s, st in self.halted_scopes.items()},
        }

    def __repr__(self) -> str:
        return (
            f"KillSwitch(restricted={self.stats()['restricted']}, handlers={len(self._handlers)})"
        )


class _NullLogger:
    """Accepts flushes and writes nothing (the warm-up switch's logger)."""

    directory = None

    def flush(self, timeout: Any = None, durable: bool = False, chained: bool = False) -> bool:
        return True

    def flush_emergency(self, timeout: Any = None) -> bool:
        return True


_warmed: list[bool] = []


def _warm_up_once(config: Any) -> None:
    """Runs the stop path and the gate a few times on a scratch switch (no logger, no latch,
    no monitor), once per process, so the first real stop does not pay for cold code."""
    if _warmed:
        return
    _warmed.append(True)
    try:
        ks = KillSwitch(
            _NullLogger(),
            latency_monitor=False,
            config=config,
            triggers=[],
            restore=False,
            check_clock=False,
            warm_up=False,
            join_control=False,
        )
        ks.add_stop_handler(lambda: None)
        order = Scope("warm-up", "warm-up", 0, "warm-up")
        for i in range(16):
            ks.allows(order)
            ks.emergency_stop(KillSwitchReason.MANUAL, 0, 0, 0, None if i & 1 else order)
            ks.allows(order)
            ks.allows(order, True)
            ks._core.restore([])
    except Exception as e:  # a warm-up must never stop a switch from starting
        log.debug("kill switch warm-up failed: %r", e)
