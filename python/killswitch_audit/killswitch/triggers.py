"""Triggers: conditions that trip the kill switch (loss limit, drawdown, position limit,
message rate, repeated executions), fed by `KillSwitch.on_pnl/on_position/on_order/on_fill`.
A trigger that trips stays tripped until its scope is reset; one whose own code raises trips
the switch with reason TRIGGER_FAILURE (fail closed). `TriggerFeedMixin` is that feeding: the
`on_*` methods of `KillSwitch`, which evaluate the armed triggers an event concerns."""

from __future__ import annotations

import logging
import time
from array import array
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..format import KillSwitchReason
from .scope import Scope, check_scope

if TYPE_CHECKING:  # annotations only
    from .._native import KillSwitchCore
    from .report import StopReport

__all__ = [
    "Drawdown",
    "LossLimit",
    "MessageRate",
    "PositionLimit",
    "RepeatedExecutions",
    "Trigger",
    "triggers_from_config",
]

log = logging.getLogger("killswitch_audit.killswitch")

_perf = time.perf_counter_ns


class Trigger:
    """Base class of a trigger. Subclasses override the `on_*` events they watch and return
    True when the switch must trip. `scope` is what a trip halts (None: the firm)."""

    reason: KillSwitchReason = KillSwitchReason.OTHER
    events: tuple[str, ...] = ()

    def __init__(self, scope: Optional[Scope] = None):
        self.scope = check_scope(scope)
        self.tripped = False

    def rearm(self) -> None:
        """Called when the trigger's scope is reset."""
        self.tripped = False

    def describe(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        return f"{self.describe()}(scope={self.scope.text}, tripped={self.tripped})"


def _positive_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


class LossLimit(Trigger):
    """Trips when the day's P&L reaches `-daily_loss_cents` (`on_pnl`)."""

    reason = KillSwitchReason.DAILY_LOSS_LIMIT
    events = ("pnl",)

    def __init__(self, daily_loss_cents: int, scope: Optional[Scope] = None):
        super().__init__(scope)
        self.limit = _positive_int("daily_loss_cents", daily_loss_cents)

    def on_pnl(self, pnl_cents: int) -> bool:
        return pnl_cents <= -self.limit

    def describe(self) -> str:
        return f"LossLimit({self.limit})"


class Drawdown(Trigger):
    """Trips when P&L falls `max_drawdown_cents` below its running peak (`on_pnl`)."""

    reason = KillSwitchReason.DRAWDOWN
    events = ("pnl",)

    def __init__(self, max_drawdown_cents: int, scope: Optional[Scope] = None):
        super().__init__(scope)
        self.limit = _positive_int("max_drawdown_cents", max_drawdown_cents)
        self.peak: Optional[int] = None

    def on_pnl(self, pnl_cents: int) -> bool:
        if self.peak is None or pnl_cents > self.peak:
            self.peak = pnl_cents
        return self.peak - pnl_cents >= self.limit

    def rearm(self) -> None:
        super().rearm()
        self.peak = None

    def describe(self) -> str:
        return f"Drawdown({self.limit})"


class PositionLimit(Trigger):
    """Trips when the absolute position exceeds `max_position` (`on_position`)."""

    reason = KillSwitchReason.POSITION_LIMIT
    events = ("position",)

    def __init__(self, max_position: int, scope: Optional[Scope] = None):
        super().__init__(scope)
        self.limit = _positive_int("max_position", max_position)

    def on_position(self, position: int, symbol_id: int = 0) -> bool:
        return abs(position) > self.limit

    def describe(self) -> str:
        return f"PositionLimit({self.limit})"


class _WindowCounter:
    """Exact sliding window: `hit` is True when this event and the `limit` before it all fall
    within `window_ns` (i.e. more than `limit` events in the window). A ring of `limit` slots
    holds the last `limit` event times."""

    __slots__ = ("i", "limit", "ring", "window_ns")

    def __init__(self, limit: int, window_ns: int):
        self.limit = limit
        self.window_ns = window_ns
        self.ring = array("q", [-(1 << 62)]) * limit
        self.i = 0

    def hit(self, now_ns: int) -> bool:
        ring = self.ring
        i = self.i
        oldest = ring[i]  # the event `limit` events before this one
        ring[i] = now_ns
        i += 1
        self.i = 0 if i == self.limit else i
        return now_ns - oldest < self.window_ns

    def clear(self) -> None:
        for j in range(len(self.ring)):
            self.ring[j] = -(1 << 62)
        self.i = 0


class MessageRate(Trigger):
    """Trips when more than `max_per_s` orders are sent within one second (`on_order`)."""

    reason = KillSwitchReason.MESSAGE_RATE
    events = ("order",)

    def __init__(self, max_per_s: int, scope: Optional[Scope] = None):
        super().__init__(scope)
        self.limit = _positive_int("max_per_s", max_per_s)
        self._w = _WindowCounter(self.limit, 1_000_000_000)

    def on_order(self, now_ns: int) -> bool:
        return self._w.hit(now_ns)

    def rearm(self) -> None:
        super().rearm()
        self._w.clear()

    def describe(self) -> str:
        return f"MessageRate({self.limit}/s)"


class RepeatedExecutions(Trigger):
    """Trips on the `n`-th execution within `window_s` seconds (`on_fill`), the RTS 6 Art 15
    "disabled after repeated executions" check; it counts every fill reported to the switch."""

    reason = KillSwitchReason.REPEATED_EXECUTIONS
    events = ("fill",)

    def __init__(self, n: int, window_s: float, scope: Optional[Scope] = None):
        super().__init__(scope)
        self.n = _positive_int("n", n)
        if (
            isinstance(window_s, bool)
            or not isinstance(window_s, (int, float))
            or not (window_s > 0)
        ):
            raise ValueError(f"window_s must be a positive number, got {window_s!r}")
        self.window_s = float(window_s)
        # trips when n fills (n-1 before this one) fall within the window
        self._w = _WindowCounter(self.n - 1, int(self.window_s * 1e9)) if n > 1 else None

    def on_fill(self, now_ns: int, symbol_id: int = 0, quantity: int = 0) -> bool:
        if self._w is None:
            return True
        return self._w.hit(now_ns)

    def rearm(self) -> None:
        super().rearm()
        if self._w is not None:
            self._w.clear()

    def describe(self) -> str:
        return f"RepeatedExecutions({self.n} in {self.window_s:g}s)"


def triggers_from_config(config: Any) -> list[Trigger]:
    """The triggers `kill_switch.triggers` of an `AuditConfig` enables (firm scope)."""
    t = config.kill_switch.triggers
    out: list[Trigger] = []
    if t.daily_loss_limit_cents is not None:
        out.append(LossLimit(t.daily_loss_limit_cents))
    if t.max_drawdown_cents is not None:
        out.append(Drawdown(t.max_drawdown_cents))
    if t.max_position is not None:
        out.append(PositionLimit(t.max_position))
    if t.max_messages_per_s is not None:
        out.append(MessageRate(t.max_messages_per_s))
    if t.repeated_executions is not None:
        out.append(RepeatedExecutions(t.repeated_executions.count, t.repeated_executions.window_s))
    return out


class TriggerFeedMixin:
    """`KillSwitch.on_pnl/on_position/on_order/on_fill`: evaluate the armed triggers an event
    feeds and trip the switch (an evaluation that raises trips it too, fail closed)."""

    # set by KillSwitch.__init__ (and `emergency_stop`, a StopMixin method)
    _core: KillSwitchCore
    _by_event: dict[str, tuple[Trigger, ...]]
    trigger_failures: int

    if TYPE_CHECKING:

        def emergency_stop(self, reason: Any = ..., *args: Any, **kwargs: Any) -> StopReport: ...

    def _trip(self, t: Trigger, **fields: Any) -> None:
        t.tripped = True
        self.emergency_stop(t.reason, scope=t.scope, **fields)

    def _trigger_failed(self, t: Trigger, e: BaseException, fields: dict) -> None:
        """Fail closed: the trigger could not be evaluated, so the switch trips."""
        self.trigger_failures += 1
        t.tripped = True
        try:
            text = f"trigger {t.describe()} raised {e!r}"[:400]
        except Exception:
            text = f"trigger {type(t).__name__} raised {type(e).__name__}"
        log.error("%s: tripping the switch (fail closed)", text)
        rep = self.emergency_stop(KillSwitchReason.TRIGGER_FAILURE, scope=t.scope, **fields)
        if rep.seq >= 0:
            self._core.text(rep.seq, text)

    def _evaluate(
        self, triggers: tuple[Trigger, ...], check: Callable[[Any], bool], fields: dict[str, int]
    ) -> None:
        """Runs `check(trigger)` for each armed trigger: True trips the switch with the
        trigger's reason; an exception trips it with TRIGGER_FAILURE (fail closed)."""
        for t in triggers:
            if t.tripped:
                continue
            try:
                hit = check(t)
            except Exception as e:
                self._trigger_failed(t, e, fields)
                continue
            if hit:
                self._trip(t, **fields)

    def on_pnl(self, pnl_cents: int) -> None:
        """Feeds the day's P&L (cents) to LossLimit / Drawdown triggers."""
        ts = self._by_event["pnl"]
        if ts:
            self._evaluate(ts, lambda t: t.on_pnl(pnl_cents), {"pnl_cents": pnl_cents})

    def on_position(self, position: int, symbol_id: int = 0) -> None:
        """Feeds a position (absolute size is checked) to PositionLimit triggers."""
        ts = self._by_event["position"]
        if ts:
            fields = {"position_size": position, "symbol_id": symbol_id}
            self._evaluate(ts, lambda t: t.on_position(position, symbol_id), fields)

    def on_order(self, now_ns: Optional[int] = None) -> None:
        """Counts an order sent (MessageRate triggers)."""
        ts = self._by_event["order"]
        if ts:
            now = _perf() if now_ns is None else now_ns
            self._evaluate(ts, lambda t: t.on_order(now), {})

    def on_fill(self, symbol_id: int = 0, quantity: int = 0, now_ns: Optional[int] = None) -> None:
        """Counts an execution (RepeatedExecutions triggers)."""
        ts = self._by_event["fill"]
        if ts:
            now = _perf() if now_ns is None else now_ns
            fields = {"symbol_id": symbol_id, "position_size": quantity}
            self._evaluate(ts, lambda t: t.on_fill(now, symbol_id, quantity), fields)
