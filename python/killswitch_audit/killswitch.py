"""The kill switch an orchestrator holds: scoped halts, an order gate, stop handlers, fail-closed
triggers, an audited reset, and a latch restored from the audit log after a restart.

    from killswitch_audit.killswitch import KillSwitch, LossLimit, Scope

    ks = KillSwitch(logger)                   # None: the global logger, monitor and config
    ks.add_stop_handler(cancel_all_orders)    # handlers must be idempotent (see below)
    ks.add_trigger(LossLimit(daily_loss_cents=2_500_000))
    ...
    if ks.allows(Scope(account="A1", strategy="mm", symbol_id=7, venue="XEUR")):
        send(order)
    ks.on_pnl(pnl_cents)                      # trips LossLimit -> emergency_stop
    ks.reset("alice", "limit raised by risk")  # audited, with who and why

Semantics (issue 8):

- **Scopes.** `Scope(account, strategy, symbol_id, venue)`; all None is the whole firm. A halt of
  a scope covers every order whose attributes match all of the scope's non-None fields. An
  order attribute left None matches no specific value, so give the gate every attribute the
  order has. The state of an order is the most restrictive state of every scope covering it.
- **States.** ACTIVE, REDUCING (only orders that reduce the position pass), HALTED. A scope only
  becomes more restrictive until an audited `reset` (`reduce_only` on a HALTED scope keeps it
  HALTED).
- **The gate.** `allows(scope, reduces_position=False)` reads a snapshot published at each state
  change: no lock, no allocation, no I/O. With the compiled extension it is the bound method of
  `_native.OrderGate` itself (one PyO3 call: an atomic load, then a match against the few
  restricted scopes); without it, a Python method that caches one decision per distinct order
  scope in the snapshot. Denials are counted; at most one ORDER_DENIED record per
  `DENIAL_AUDIT_INTERVAL_NS` carries the count since the previous one.
- **emergency_stop.** (1) flip the gate, (2) audit KILL_SWITCH and STATE_CHANGE through the
  emergency ring, (3) run each stop handler in registration order, isolated and timed (a
  handler that raises gets a HANDLER_FAILURE record, a log line, and the next one still runs),
  (4) STOP_STEP records with each step's time since the trigger, (5) optionally wait, bounded,
  until the log is durable. It never raises. A trigger while halted is audited again and runs
  the handlers again, so **handlers must be idempotent**.
- **Latch.** A new `KillSwitch` on an audit directory rebuilds every scope's latest state from
  its STATE_CHANGE and RESET records (TEXT records map scope ids back to scopes) before it
  answers `allows`. A scope id whose text cannot be found, or a damaged log, restores as a
  firm-wide restriction (the switch fails closed) until a firm-wide reset recorded later.
- **Reset.** Needs a named operator and a reason (and, with `kill_switch.reset.
  require_second_operator`, a different second operator); a refused reset is audited as
  refused and raises `ResetRefused`. Accepted resets wait (bounded) until they are durable.
- **Triggers** evaluated by `on_pnl`, `on_position`, `on_order`, `on_fill`. A trigger that trips
  stays tripped (does not re-fire on every tick) until its scope is reset. A trigger whose own
  code raises trips the switch with reason TRIGGER_FAILURE.

Record fields are documented in docs/FORMAT.md ("Kinds"). Scope ids (`c`) are the first 8 bytes
(little-endian) of BLAKE2b over the scope's canonical text (`Scope.text`); the firm scope is id 0.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import weakref
from array import array
from collections import Counter
from typing import Any, Callable, NamedTuple, Optional, Union

from .errors import AuditLogCorrupt, AuditLoggerClosed, ResetRefused
from .format import KillSwitchReason, RecordKind, TradingState, encode_text_chunks

__all__ = [
    "DENIAL_AUDIT_INTERVAL_NS",
    "Drawdown",
    "HandlerOutcome",
    "KillSwitch",
    "LossLimit",
    "MessageRate",
    "PositionLimit",
    "RepeatedExecutions",
    "Scope",
    "StopReport",
    "StopStep",
    "Trigger",
    "clock_evidence",
    "reason_code",
    "scope_id",
]

log = logging.getLogger("killswitch_audit.killswitch")
alerts = logging.getLogger("killswitch_audit.alerts")

_perf = time.perf_counter_ns

K_KILL_SWITCH = int(RecordKind.KILL_SWITCH)
K_STATE_CHANGE = int(RecordKind.STATE_CHANGE)
K_RESET = int(RecordKind.RESET)
K_HANDLER_FAILURE = int(RecordKind.HANDLER_FAILURE)
K_TEXT = int(RecordKind.TEXT)
K_ORDER_DENIED = int(RecordKind.ORDER_DENIED)
K_STOP_STEP = int(RecordKind.STOP_STEP)

ACTIVE = int(TradingState.ACTIVE)
REDUCING = int(TradingState.REDUCING)
HALTED = int(TradingState.HALTED)

#: at most one ORDER_DENIED record per this many ns (the record carries the count)
DENIAL_AUDIT_INTERVAL_NS = 100_000_000
#: distinct order scopes whose decision a gate snapshot caches; beyond it, computed per call
_DECISION_CACHE_MAX = 65_536
#: how long an accepted reset waits for its records to be durable (s)
_RESET_DURABLE_TIMEOUT_S = 2.0

_TEXT_SCOPE = "scope:"
_TEXT_REASON = "reason:"


class StopStep:
    """`code` values of STOP_STEP records (`a`: ns since the trigger, `c`: the KILL_SWITCH seq)."""

    BLOCKED = 1  #: the gate denies new orders; `b`: ns until KILL_SWITCH/STATE_CHANGE were audited
    HANDLERS_DONE = 3  #: every stop handler has returned (or raised)
    DURABLE = 4  #: the log was durable within the wait bound
    DURABLE_TIMEOUT = 5  #: the bounded wait for durability ran out
    HANDLER_BASE = 1000  #: 1000 + i: stop handler i returned; `b`: its own elapsed ns


# --------------------------------------------------------------------------------------------
# Scope


def _esc(v: str) -> str:
    return v.replace("%", "%25").replace(";", "%3B").replace("=", "%3D")


def _unesc(v: str) -> str:
    return v.replace("%3D", "=").replace("%3B", ";").replace("%25", "%")


class _ScopeFields(NamedTuple):
    account: Optional[str]
    strategy: Optional[str]
    symbol_id: Optional[int]
    venue: Optional[str]


class Scope(_ScopeFields):
    """What a halt applies to. All None: the whole firm. A halt of a scope covers every order
    whose attributes match all of the scope's non-None fields. Frozen and hashable (a tuple:
    hashing and comparing it runs in C, which keeps the order gate cheap)."""

    __slots__ = ()

    def __new__(
        cls,
        account: Optional[str] = None,
        strategy: Optional[str] = None,
        symbol_id: Optional[int] = None,
        venue: Optional[str] = None,
    ) -> Scope:
        for name, v in (("account", account), ("strategy", strategy), ("venue", venue)):
            if v is not None and not isinstance(v, str):
                raise TypeError(f"Scope.{name} must be a str or None, not {type(v).__name__}")
        if symbol_id is not None:
            if isinstance(symbol_id, bool) or not isinstance(symbol_id, int):
                raise TypeError(
                    f"Scope.symbol_id must be an int or None, not {type(symbol_id).__name__}"
                )
            if not 0 <= symbol_id <= 0xFFFF_FFFF:
                raise ValueError(f"Scope.symbol_id must be in 0..2**32-1, got {symbol_id}")
        return tuple.__new__(cls, (account, strategy, symbol_id, venue))

    @property
    def is_firm(self) -> bool:
        return (
            self.account is None
            and self.strategy is None
            and self.symbol_id is None
            and (self.venue is None)
        )

    def covers(self, order: Optional[Scope]) -> bool:
        """True when a halt of this scope applies to an order with the attributes `order`."""
        if order is None:
            return self.is_firm
        return (
            (self.account is None or self.account == order.account)
            and (self.strategy is None or self.strategy == order.strategy)
            and (self.symbol_id is None or self.symbol_id == order.symbol_id)
            and (self.venue is None or self.venue == order.venue)
        )

    @property
    def text(self) -> str:
        """Canonical text, e.g. ``account=A1;symbol_id=7`` (``firm`` for the firm scope)."""
        parts = []
        if self.account is not None:
            parts.append(f"account={_esc(self.account)}")
        if self.strategy is not None:
            parts.append(f"strategy={_esc(self.strategy)}")
        if self.symbol_id is not None:
            parts.append(f"symbol_id={int(self.symbol_id)}")
        if self.venue is not None:
            parts.append(f"venue={_esc(self.venue)}")
        return ";".join(parts) if parts else "firm"

    @classmethod
    def parse(cls, text: str) -> Scope:
        """The scope whose `text` is `text` (ValueError if malformed)."""
        text = text.strip()
        if text == "firm":
            return FIRM
        fields: dict[str, Any] = {}
        for part in text.split(";"):
            key, sep, value = part.partition("=")
            if not sep or key not in cls._fields or key in fields:
                raise ValueError(f"malformed scope text {text!r}")
            fields[key] = int(value) if key == "symbol_id" else _unesc(value)
        return cls(**fields)

    @property
    def scope_id(self) -> int:
        """Stable 64-bit id written in the `c` field of records (0 for the firm scope)."""
        return scope_id(self)

    def __str__(self) -> str:
        return self.text


FIRM = Scope()

_ID_CACHE: dict[Scope, int] = {FIRM: 0}


def scope_id(scope: Optional[Scope]) -> int:
    """Stable 64-bit id of a scope: first 8 bytes (LE) of BLAKE2b(canonical text); firm: 0."""
    if scope is None:
        return 0
    sid = _ID_CACHE.get(scope)
    if sid is None:
        digest = hashlib.blake2b(scope.text.encode("utf-8"), digest_size=8).digest()
        sid = int.from_bytes(digest, "little") or 1
        if len(_ID_CACHE) < 100_000:
            _ID_CACHE[scope] = sid
    return sid


def _check_scope(scope: Any) -> Scope:
    if scope is None:
        return FIRM
    if isinstance(scope, Scope):
        return scope
    raise TypeError(f"scope must be a Scope or None, not {type(scope).__name__}")


# --------------------------------------------------------------------------------------------
# Reasons

_REASON_LOOKUP: dict[Any, KillSwitchReason] = {}
for _r in KillSwitchReason:
    _REASON_LOOKUP[int(_r)] = _r
    for _n in {_r.name, _r.name.lower(), _r.name.title(), _r.name.replace("_", " ").lower()}:
        _REASON_LOOKUP[_n] = _r
del _r, _n


def reason_code(reason: Any) -> tuple[int, Optional[str]]:
    """(code, text to keep or None) for a `KillSwitchReason`, an int or a string (any case).

    An unknown string gives OTHER and the string itself; an int outside 0..65535 (or not an int)
    gives OTHER and its repr. A known int outside the enum is kept as is.
    """
    r = _REASON_LOOKUP.get(reason) if not isinstance(reason, bool) else None
    if r is not None:
        return int(r), None
    if isinstance(reason, str):
        r = _REASON_LOOKUP.get(reason.strip().upper().replace(" ", "_").replace("-", "_"))
        if r is not None:
            return int(r), None
        return int(KillSwitchReason.OTHER), reason
    if isinstance(reason, int) and not isinstance(reason, bool) and 0 <= reason <= 0xFFFF:
        return int(reason), None
    try:
        text = repr(reason)
    except Exception:
        text = f"<unprintable {type(reason).__name__}>"
    return int(KillSwitchReason.OTHER), text


def _reason_name(code: int) -> str:
    try:
        return KillSwitchReason(code).name
    except ValueError:
        return str(code)


# --------------------------------------------------------------------------------------------
# Reports


class HandlerOutcome(NamedTuple):
    """What one stop handler did: its name, whether it returned, its time and its error."""

    name: str
    ok: bool
    elapsed_ns: int
    error: Optional[str] = None


class StopReport(NamedTuple):
    """What `emergency_stop` (or `reduce_only`) did; immutable. Latencies are ns since the
    trigger (the call's start): `trigger_to_block_ns` until the gate denied new orders,
    `trigger_to_audit_ns` until the KILL_SWITCH and STATE_CHANGE records were handed to the
    logger, `trigger_to_handlers_done_ns` until the last handler returned. `seq` is the
    KILL_SWITCH record's sequence number (-1: not audited; see `errors`). `handlers` holds
    (name, ok, elapsed_ns, error) per stop handler. `durable` is None when no wait was asked,
    else whether the log was durable within the bound."""

    reason: int
    reason_text: Optional[str]
    scope: Scope
    state: int
    seq: int
    trigger_to_block_ns: int
    trigger_to_audit_ns: int
    trigger_to_handlers_done_ns: int
    handlers: tuple[HandlerOutcome, ...]
    durable: Optional[bool]
    errors: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Audited, every handler returned, and durable if a wait was asked."""
        return (
            self.seq >= 0
            and not self.errors
            and all(h[1] for h in self.handlers)
            and self.durable is not False
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "reason": _reason_name(self.reason),
            "reason_text": self.reason_text,
            "scope": self.scope.text,
            "state": TradingState(self.state).name,
            "seq": self.seq,
            "trigger_to_block_ns": self.trigger_to_block_ns,
            "trigger_to_audit_ns": self.trigger_to_audit_ns,
            "trigger_to_handlers_done_ns": self.trigger_to_handlers_done_ns,
            "handlers": [HandlerOutcome(*h)._asdict() for h in self.handlers],
            "durable": self.durable,
            "errors": list(self.errors),
            "ok": self.ok,
        }

    def __repr__(self) -> str:
        hs = ", ".join(f"{h[0]}:{'ok' if h[1] else 'FAILED'}" for h in self.handlers)
        return (
            f"StopReport({_reason_name(self.reason)}, scope={self.scope.text}, seq={self.seq}, "
            f"block={self.trigger_to_block_ns} ns, handlers_done="
            f"{self.trigger_to_handlers_done_ns} ns, handlers=[{hs}], durable={self.durable}, "
            f"errors={list(self.errors)})"
        )


_new_report = tuple.__new__
_new_outcome = tuple.__new__


# --------------------------------------------------------------------------------------------
# Triggers


class Trigger:
    """Base class of a trigger. Subclasses override the `on_*` events they watch and return
    True when the switch must trip. `scope` is what a trip halts (None: the firm)."""

    reason: KillSwitchReason = KillSwitchReason.OTHER
    events: tuple[str, ...] = ()

    def __init__(self, scope: Optional[Scope] = None):
        self.scope = _check_scope(scope)
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


# --------------------------------------------------------------------------------------------
# Clock evidence


def clock_evidence(max_error_us: float = 100.0) -> dict[str, Any]:
    """The kernel's clock synchronisation state (adjtimex, through the native extension) judged
    against `max_error_us` (MiFID II RTS 25: 100 µs for HFT). Returns {"state", "est_error_us",
    "max_error_us", "status_bits", "ok", "message"}; never invents a figure: without the
    extension or the syscall the state is "unknown" and the figures are None."""
    try:
        from . import _native

        state, est, mx, bits = _native.clock_sync_state()
    except Exception:
        return {
            "state": "unknown",
            "est_error_us": None,
            "max_error_us": None,
            "status_bits": None,
            "ok": False,
            "message": "clock synchronisation unknown: the kernel's figures are not available "
            "(no native extension); the log carries no evidence of traceability to UTC",
        }
    if state == 2:
        return {
            "state": "unknown",
            "est_error_us": None,
            "max_error_us": None,
            "status_bits": bits,
            "ok": False,
            "message": "clock synchronisation unknown: adjtimex gave no answer; the log "
            "carries no evidence of traceability to UTC",
        }
    if state == 1:
        return {
            "state": "unsynchronised",
            "est_error_us": est,
            "max_error_us": mx,
            "status_bits": bits,
            "ok": False,
            "message": "the kernel reports the clock UNSYNCHRONISED (no NTP/PTP discipline on "
            f"this machine; kernel maximum error {mx} us): timestamps are not traceable to UTC "
            "within the RTS 25 bound",
        }
    ok = mx <= max_error_us
    msg = (
        f"clock synchronised: estimated error {est} us, maximum error {mx} us "
        f"(bound {max_error_us:g} us)"
    )
    if not ok:
        msg += ": the maximum error EXCEEDS the RTS 25 bound"
    return {
        "state": "synchronised",
        "est_error_us": est,
        "max_error_us": mx,
        "status_bits": bits,
        "ok": ok,
        "message": msg,
    }


# --------------------------------------------------------------------------------------------
# Gate snapshot


class _Snapshot:
    """Immutable restriction map plus a decision cache. `clear`: nothing is restricted."""

    __slots__ = ("clear", "decisions", "deny_ids", "restricted")

    def __init__(self, restricted: dict[Scope, int]):
        self.restricted = restricted
        self.clear = not restricted
        self.decisions: dict[Optional[Scope], int] = {}
        self.deny_ids: dict[Optional[Scope], int] = {}

    def resolve(self, order: Optional[Scope]) -> int:
        """Most restrictive state of every restricted scope covering `order` (and cache it)."""
        if order is not None and type(order) is not Scope:
            order = _check_scope(order)  # TypeError for anything but a Scope
        state = ACTIVE
        deny = 0
        for scope, st in self.restricted.items():
            if st > state and scope.covers(order):
                state = st
                deny = scope_id(scope)
        if len(self.decisions) < _DECISION_CACHE_MAX:
            try:
                hash(order)
            except TypeError:
                return state
            self.deny_ids[order] = deny
            self.decisions[order] = state
        return state


# --------------------------------------------------------------------------------------------
# KillSwitch


Handler = Callable[[], Any]


class KillSwitch:
    """The kill switch (see the module doc). `audit_logger`, `latency_monitor`, `config`: None
    takes the global logger, the global monitor and the loaded config; `latency_monitor=False`
    records no latencies. `triggers`: None takes those the config enables; pass a list to
    replace them. `restore=False` skips rebuilding the state from the log (tests only).
    `native_gate=False` uses the Python gate even when the extension has the native one.
    `check_clock=False` skips the clock check at start. The first switch of a process runs the
    stop path a few times on a scratch switch that writes nothing (`warm_up`), so that the
    first real stop does not pay for cold code (measured: tens of µs to block, cold, against
    ~1-2 µs warm)."""

    def __init__(
        self,
        audit_logger: Any = None,
        latency_monitor: Any = None,
        config: Any = None,
        *,
        triggers: Optional[list[Trigger]] = None,
        restore: bool = True,
        native_gate: bool = True,
        check_clock: bool = True,
        warm_up: bool = True,
    ):
        if config is None:
            from .config import load_config

            config = load_config()
        self.config = config
        if audit_logger is None:
            from .logger import get_global_audit_logger

            audit_logger = get_global_audit_logger()
        self.audit_logger = audit_logger
        if latency_monitor is None:
            try:
                from .monitor import get_global_latency_monitor

                latency_monitor = get_global_latency_monitor()
            except Exception as e:  # no native extension: no monitor, said once
                log.warning("no latency monitor (%s); emergency_stop latencies not recorded", e)
                latency_monitor = False
        self.latency_monitor = latency_monitor or None
        self._record_latency = latency_monitor.record if latency_monitor else None
        self._audit = audit_logger.audit
        self._audit_ks = audit_logger.audit_kill_switch
        ks = config.kill_switch
        self.require_second_operator = bool(ks.reset.require_second_operator)
        self.default_wait_durable_s = float(ks.wait_durable_ms) / 1000.0
        self.clock_max_error_us = float(config.clock.max_error_us)

        self._lock = threading.Lock()  # writers only (stop, reduce, reset); allows() never takes it
        self._handlers: list[tuple[str, Handler]] = []
        self._handlers_t: tuple[tuple[str, Handler], ...] = ()
        self._states: dict[Scope, int] = {}  # own state of every restricted scope
        self._scopes_written: set[Scope] = {FIRM}  # scopes whose text the log already holds
        self._snap = _Snapshot({})
        #: the native order gate (killswitch_audit._native.OrderGate) when the extension has
        #: it: `allows` is then its bound method, one PyO3 call per order
        self._gate: Any = None
        if native_gate:
            try:
                from ._native import OrderGate
            except ImportError:
                OrderGate = None
            if OrderGate is not None:
                self._gate = OrderGate(_denial_sink(weakref.ref(self)), DENIAL_AUDIT_INTERVAL_NS)
                self.allows = self._gate.allows  # type: ignore[method-assign]
        # counters
        self._py_denials = 0
        self._denials_audited = 0
        self._last_denial_audit_ns = -(1 << 62)
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

        if restore:
            self._restore()
        self.clock = self.check_clock() if check_clock else None
        if warm_up:
            _warm_up_once(config, native_gate)

    # ---------------------------------------------------------------- handlers and triggers

    def add_stop_handler(self, fn: Handler, name: Optional[str] = None) -> None:
        """Adds a stop handler, called with no arguments on every `emergency_stop`, after the
        gate is flipped and the trigger audited, in registration order. Must be idempotent."""
        if not callable(fn):
            raise TypeError(f"stop handler must be callable, not {type(fn).__name__}")
        label = (
            name or getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
        )
        with self._lock:
            self._handlers.append((str(label), fn))
            self._handlers_t = tuple(self._handlers)

    def add_trigger(self, trigger: Trigger) -> Trigger:
        """Adds a trigger (evaluated by the `on_*` calls its `events` name)."""
        if not isinstance(trigger, Trigger):
            raise TypeError(f"trigger must be a Trigger, not {type(trigger).__name__}")
        self._triggers.append(trigger)
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
        return HALTED in self._states.values()

    @property
    def halted_scopes(self) -> dict[Scope, TradingState]:
        """Every scope that is not ACTIVE, with its own state."""
        return {s: TradingState(v) for s, v in self._states.items()}

    def trading_state(self, scope: Optional[Scope] = None) -> TradingState:
        """The state orders of `scope` are under: the most restrictive state of every restricted
        scope covering it (None: the firm scope, i.e. orders with no attributes)."""
        snap = self._snap or self._python_snapshot()
        if snap.clear:
            return TradingState.ACTIVE
        st = snap.decisions.get(scope)
        if st is None:
            st = snap.resolve(
                scope if scope is None or isinstance(scope, Scope) else _check_scope(scope)
            )
        return TradingState(st)

    def _python_snapshot(self) -> _Snapshot:
        """With the native gate the Python snapshot is built on demand (for trading_state)."""
        with self._lock:
            snap = self._snap
            if snap is None:
                snap = self._snap = _Snapshot(self._states)
            return snap

    def allows(self, scope: Optional[Scope] = None, reduces_position: bool = False) -> bool:
        """The order gate: may an order with attributes `scope` be sent? ACTIVE: yes;
        REDUCING: only when `reduces_position`; HALTED: no. Reads the current snapshot: no
        lock, no I/O. A denial is counted; at most one ORDER_DENIED record per
        `DENIAL_AUDIT_INTERVAL_NS` carries the count since the previous one."""
        snap = self._snap or self._python_snapshot()
        if snap.clear:
            return True
        st = snap.decisions.get(scope)
        if st is None:
            st = snap.resolve(scope)
        if not st or (reduces_position and st == 1):
            return True
        self._py_denials += 1
        if _perf() - self._last_denial_audit_ns >= DENIAL_AUDIT_INTERVAL_NS:
            self._last_denial_audit_ns = _perf()
            total = self._py_denials
            n = total - self._denials_audited
            self._denials_audited = total
            sym = scope.symbol_id if scope is not None and scope.symbol_id is not None else 0
            self._audit_denials(n, sym, snap.deny_ids.get(scope, 0))
        return False

    @property
    def denials(self) -> int:
        """Orders the gate has denied."""
        return self._py_denials + (self._gate.denials if self._gate is not None else 0)

    def _audit_denials(self, count: int, symbol_id: int, deny_scope_id: int) -> None:
        """One ORDER_DENIED record: `count` denials since the previous one."""
        try:
            self._audit(K_ORDER_DENIED, 0, symbol_id, count, 0, deny_scope_id)
        except Exception:
            self.audit_failures += 1

    # ---------------------------------------------------------------- writing helpers

    def _text(self, attached_seq: int, text: str) -> None:
        """TEXT records carrying `text`, attached to record `attached_seq` (emergency ring)."""
        if attached_seq < 0:
            return
        audit = self._audit
        for idx, a, b, sym in encode_text_chunks(text):
            audit(K_TEXT, idx, sym, a, b, attached_seq, True)

    def _set_state_locked(self, scope: Scope, new: int, sid: int) -> None:
        """Copy-on-write: a new state map, and the gate flips by one published snapshot (the
        native gate's, or the Python one). Published maps are never mutated. Writers hold
        `_lock`."""
        states = self._states.copy()
        if new == ACTIVE:
            states.pop(scope, None)
        else:
            states[scope] = new
        gate = self._gate
        if gate is not None:
            gate.set_scope(scope[0], scope[1], scope[2], scope[3], new, sid)
            self._states = states
            self._snap = None  # built on demand by trading_state()
        else:
            self._states = states
            self._snap = _Snapshot(states)

    def _publish_locked(self, states: dict[Scope, int]) -> None:
        """Replaces every scope's state at once (restore). Writers hold `_lock`."""
        gate = self._gate
        if gate is not None:
            gate.publish([(*s, st, scope_id(s)) for s, st in states.items()])
        self._states = states
        self._snap = _Snapshot(states)

    # ---------------------------------------------------------------- emergency stop

    def emergency_stop(
        self,
        reason: Any = KillSwitchReason.MANUAL,
        symbol_id: int = 0,
        position_size: int = 0,
        pnl_cents: int = 0,
        scope: Optional[Scope] = None,
        wait_durable: Union[bool, float, None] = None,
        *,
        _target: int = HALTED,
    ) -> StopReport:
        """Halts `scope` (None: the firm): flip the gate, audit, run the stop handlers, record
        the steps, optionally wait (bounded, in seconds; None: the config's
        `kill_switch.wait_durable_ms`; True: 1 s) until durable. Never raises."""
        t0 = _perf()
        errors: list[str] = []
        sc = FIRM if scope is None else scope
        if type(sc) is not Scope:
            try:
                sc = _check_scope(sc)
            except Exception as e:
                sc = FIRM  # fail closed: a malformed scope halts the whole firm
                errors.append(f"bad scope {scope!r} ({e}): halting the firm")
                log.error("emergency_stop: %s", errors[-1])
        try:
            r = _REASON_LOOKUP.get(reason)
        except TypeError:  # unhashable
            r = None
        if r is not None and type(reason) is not bool:
            code, text = r, None
        else:
            code, text = reason_code(reason)
        sid = 0 if sc is FIRM else scope_id(sc)
        seq = -1
        old = new = _target
        # 1 + 2: flip the gate, then audit, under the writers' lock so that the log's order of
        # state records is the order of the state changes
        lock = self._lock
        lock.acquire()
        try:
            old = self._states.get(sc, ACTIVE)
            new = _target if _target > old else old
            if new != old:
                self._set_state_locked(sc, new, sid)
            t_block = _perf()
            try:
                try:
                    if sid == 0:
                        seq = self._audit_ks(code, symbol_id, position_size, pnl_cents)
                    else:
                        seq = self._audit(
                            K_KILL_SWITCH, code, symbol_id, position_size, pnl_cents, sid, True
                        )
                except (TypeError, OverflowError, ValueError) as e:
                    # bad numbers from the caller must not cost the record: keep it, zeroed
                    errors.append(f"bad argument, recorded as 0: {e}")
                    seq = self._audit(
                        K_KILL_SWITCH,
                        code,
                        _u32(symbol_id),
                        _i64(position_size),
                        _i64(pnl_cents),
                        sid,
                        True,
                    )
                sc_seq = self._audit(K_STATE_CHANGE, new, 0, old, code, sid, True)
                if sc not in self._scopes_written and sc_seq >= 0:
                    # the scope's text, once: a restart maps the id back to the scope
                    self._scopes_written.add(sc)
                    self._text(sc_seq, _TEXT_SCOPE + sc.text)
            except Exception as e:
                self._audit_failed(errors, e)
        except BaseException as e:  # pragma: no cover - defensive: the gate must still flip
            errors.append(f"state change failed: {e!r}")
            log.critical("emergency_stop: state change failed (%r): halting the firm", e)
            try:
                states = dict(self._states)
                states[FIRM] = HALTED
                self._publish_locked(states)
            except BaseException as e2:
                errors.append(f"firm-wide fallback failed: {e2!r}")
            t_block = _perf()
        finally:
            lock.release()
        t_audit = _perf()
        if seq < 0 and not errors:
            self.audit_failures += 1
            errors.append("the emergency ring was full: KILL_SWITCH record dropped")
            log.critical("emergency_stop: KILL_SWITCH record dropped (emergency ring full)")

        # 3: stop handlers, each isolated and timed (a handler's time runs from the end of
        # the previous one)
        outcomes: list[HandlerOutcome] = []
        steps: list[int] = []
        prev = t_audit
        if _target == HALTED:
            for i, (name, fn) in enumerate(self._handlers_t):
                try:
                    fn()
                except BaseException as e:  # a stop path must finish, whatever a handler does
                    now = _perf()
                    outcomes.append(
                        _new_outcome(HandlerOutcome, (name, False, now - prev, repr(e)))
                    )
                    self._handler_failed(i, name, now - prev, seq, e)
                else:
                    now = _perf()
                    outcomes.append(_new_outcome(HandlerOutcome, (name, True, now - prev, None)))
                steps.append(now - t0)
                prev = now
        t_done = _perf()
        self.stops += 1

        # 4: step records, side texts, latencies
        audit = self._audit
        try:
            audit(K_STOP_STEP, 1, 0, t_block - t0, t_audit - t0, seq, True)  # BLOCKED
            for i, t in enumerate(steps):
                audit(K_STOP_STEP, 1000 + i, 0, t, outcomes[i][2], seq, True)
            audit(K_STOP_STEP, 3, 0, t_done - t0, 0, seq, True)  # HANDLERS_DONE
            if text is not None:
                self.unknown_reasons[text] += 1
                self._text(seq, _TEXT_REASON + text)
        except Exception as e:
            self._audit_failed(errors, e)
        rec = self._record_latency
        if rec is not None:
            try:
                rec("emergency_stop", t_done - t0)
                rec("kill_switch_audit", t_audit - t_block)
            except Exception as e:
                log.warning("latency monitor record failed: %r", e)

        # 5: optional bounded wait for durability
        durable = None
        if wait_durable is None:
            wait_s = self.default_wait_durable_s
        elif wait_durable is True:
            wait_s = 1.0
        elif wait_durable is False:
            wait_s = 0.0
        else:
            try:
                wait_s = max(0.0, float(wait_durable))
            except Exception:
                wait_s = 1.0
        if wait_s > 0:
            try:
                durable = bool(self.audit_logger.flush(wait_s, durable=True))
            except Exception as e:
                durable = False
                errors.append(f"durability wait failed: {e!r}")
            try:
                step = StopStep.DURABLE if durable else StopStep.DURABLE_TIMEOUT
                audit(K_STOP_STEP, step, 0, _perf() - t0, 0, seq, True)
            except Exception:
                pass
            if not durable:
                log.error("emergency_stop: halt record not durable within %.3f s", wait_s)
        report = _new_report(
            StopReport,
            (
                code,
                text,
                sc,
                new,
                seq,
                t_block - t0,
                t_audit - t0,
                t_done - t0,
                tuple(outcomes),
                durable,
                tuple(errors),
            ),
        )
        self.last_report = report
        return report

    def reduce_only(
        self,
        reason: Any = KillSwitchReason.MANUAL,
        scope: Optional[Scope] = None,
        wait_durable: Union[bool, float, None] = None,
    ) -> StopReport:
        """Puts `scope` in REDUCING: only orders that reduce the position pass. Audited like a
        stop (KILL_SWITCH + STATE_CHANGE); the stop handlers do NOT run (they cancel and stop
        everything). A HALTED scope stays HALTED. Never raises."""
        return self.emergency_stop(reason, 0, 0, 0, scope, wait_durable, _target=REDUCING)

    def _audit_failed(self, errors: list[str], e: BaseException) -> None:
        self.audit_failures += 1
        what = "audit logger closed" if isinstance(e, AuditLoggerClosed) else repr(e)
        errors.append(f"audit failed: {what}")
        log.critical("kill switch: audit failed (%s); the gate is flipped regardless", what)

    def _handler_failed(self, i: int, name: str, elapsed: int, ks_seq: int, e: BaseException):
        self.handler_failures += 1
        log.error("stop handler %d (%s) raised %r; continuing with the next", i, name, e)
        try:
            hseq = self._audit(K_HANDLER_FAILURE, i, 0, elapsed, 0, max(ks_seq, 0), True)
            self._text(hseq, f"handler {name}: {e!r}"[:400])
        except Exception:
            self.audit_failures += 1

    # ---------------------------------------------------------------- triggers

    def _trip(self, t: Trigger, **fields: Any) -> None:
        t.tripped = True
        self.emergency_stop(t.reason, scope=t.scope, **fields)

    def _trigger_failed(self, t: Trigger, e: BaseException, pnl: int, fields: dict) -> None:
        """Fail closed: the trigger could not be evaluated, so the switch trips."""
        self.trigger_failures += 1
        t.tripped = True
        text = f"trigger {t.describe()} raised {e!r}"[:400]
        log.error("%s: tripping the switch (fail closed)", text)
        rep = self.emergency_stop(
            KillSwitchReason.TRIGGER_FAILURE,
            _u32(fields.get("symbol_id", 0)),
            _i64(fields.get("position_size", 0)),
            pnl,
            t.scope,
        )
        try:
            self._text(rep.seq, text)
        except Exception:
            self.audit_failures += 1

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
                self._trigger_failed(t, e, _i64(fields.get("pnl_cents", 0)), fields)
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

    # ---------------------------------------------------------------- reset

    def reset(
        self,
        operator: str,
        note: str = "",
        scope: Optional[Scope] = None,
        second_operator: Optional[str] = None,
    ) -> TradingState:
        """Lifts the restriction of `scope` (None: the firm scope itself) back to ACTIVE.

        Needs a named `operator` and a reason (`note`); with `kill_switch.reset.
        require_second_operator` also a `second_operator` other than `operator`. Refused (and
        audited as refused, then `ResetRefused` raised) when one is missing or the scope is not
        restricted. An accepted reset is audited (RESET with before/after state and scope, a
        STATE_CHANGE, a TEXT with who and why), waits up to 2 s until durable, re-arms the
        triggers of the scope, and returns the state the firm scope is now in."""
        sc = _check_scope(scope)
        op = operator.strip() if isinstance(operator, str) else ""
        why = note.strip() if isinstance(note, str) else ""
        second = second_operator.strip() if isinstance(second_operator, str) else ""
        sid = scope_id(sc)
        refusal = None
        if not op:
            refusal = "a reset needs a named operator"
        elif not why:
            refusal = "a reset needs a reason (note)"
        elif self.require_second_operator and not second:
            refusal = (
                "config requires a second operator (kill_switch.reset.require_second_operator)"
            )
        elif self.require_second_operator and second.casefold() == op.casefold():
            refusal = f"the second operator must differ from the first ({op!r} twice)"
        with self._lock:
            old = self._states.get(sc, ACTIVE)
            if refusal is None and old == ACTIVE:
                refusal = f"scope {sc.text} is not halted (state ACTIVE): nothing to reset"
            if refusal is not None:
                try:
                    rseq = self._audit(K_RESET, 1, 0, old, old, sid, True)
                    self._text(
                        rseq,
                        f"REFUSED operator={op!r} second={second!r} scope={sc.text} "
                        f"note={why!r}: {refusal}"[:600],
                    )
                except Exception as e:
                    self.audit_failures += 1
                    log.error("refused reset could not be audited: %r", e)
                log.warning("kill-switch reset refused: %s", refusal)
                raise ResetRefused(refusal)
            # audit first: a reset that cannot be recorded is refused and the halt stays
            try:
                rseq = self._audit(K_RESET, 0, 0, old, ACTIVE, sid, True)
                failure = None if rseq >= 0 else "the emergency ring is full"
            except Exception as e:
                rseq, failure = -1, repr(e)
            if failure is not None:
                self.audit_failures += 1
                why_not = f"the reset could not be audited ({failure}): {sc.text} stays restricted"
                log.critical("kill-switch reset refused: %s", why_not)
                raise ResetRefused(why_not)
            self._set_state_locked(sc, ACTIVE, sid)
            try:
                self._audit(K_STATE_CHANGE, ACTIVE, 0, old, int(KillSwitchReason.MANUAL), sid, True)
                self._text(
                    rseq,
                    f"operator={op} second={second} scope={sc.text} note={why}"[:600],
                )
                if sc not in self._scopes_written:
                    self._scopes_written.add(sc)
                    self._text(rseq, _TEXT_SCOPE + sc.text)
            except Exception as e:
                self.audit_failures += 1
                log.critical("kill-switch reset: records after RESET failed: %r", e)
        for t in self._triggers:
            if t.tripped and self._states.get(t.scope, ACTIVE) == ACTIVE:
                t.rearm()
        try:
            if not self.audit_logger.flush(_RESET_DURABLE_TIMEOUT_S, durable=True):
                log.error("kill-switch reset not durable within %.1f s", _RESET_DURABLE_TIMEOUT_S)
        except Exception as e:
            log.error("kill-switch reset: durability wait failed: %r", e)
        log.warning("kill switch reset by %s (scope %s): %s", op, sc.text, why)
        return self.trading_state(None)

    # ---------------------------------------------------------------- restore

    def _restore(self) -> None:
        """Rebuilds every scope's latest state from STATE_CHANGE / RESET records in the log."""
        directory = getattr(self.audit_logger, "directory", None)
        if directory is None or not os.path.isdir(os.fspath(directory)):
            return
        texts: dict[int, dict[int, str]] = {}
        latest: dict[int, tuple[int, int]] = {}  # scope id -> (seq, state) of its latest record
        try:
            recs, damage = _state_records(directory)
        except OSError as e:
            recs, damage = [], (1 << 63, str(e))
        for r in recs:
            k = int(r.kind)
            if k == K_TEXT:
                texts.setdefault(r.c, {})[r.code] = r.text or ""
                continue
            if k == K_STATE_CHANGE:
                state = r.code
            elif r.code == 0:  # accepted RESET
                state = r.b
            else:
                continue
            prev = latest.get(r.c)
            if prev is None or r.seq > prev[0]:
                latest[r.c] = (r.seq, state)
        # a firm-wide record later than an unknown restriction (or than damage) supersedes it:
        # the operator's firm reset is how a fail-closed restore is lifted
        firm_seq = latest.get(0, (-1, ACTIVE))[0]
        id_to_scope: dict[int, Scope] = {0: FIRM}
        for chunks in texts.values():
            text = "".join(chunks[i] for i in sorted(chunks))
            if text.startswith(_TEXT_SCOPE):
                try:
                    s = Scope.parse(text[len(_TEXT_SCOPE) :])
                except ValueError:
                    continue
                id_to_scope[scope_id(s)] = s
        states: dict[Scope, int] = {}
        for sid, (seq, state) in latest.items():
            if state not in (ACTIVE, REDUCING, HALTED):
                state = HALTED
            s = id_to_scope.get(sid)
            if s is None:
                if state != ACTIVE and seq > firm_seq:
                    note = (
                        f"scope id {sid:#x} (seq {seq}) is {TradingState(state).name} but its "
                        "scope text is missing: restored as a FIRM-WIDE restriction (fail closed)"
                    )
                    self.restore_notes.append(note)
                    log.error("kill switch restore: %s", note)
                    states[FIRM] = max(states.get(FIRM, ACTIVE), state)
                continue
            self._scopes_written.add(s)
            if state != ACTIVE:
                states[s] = max(states.get(s, ACTIVE), state)
        self._scopes_written.update(id_to_scope.values())
        if damage is not None and damage[0] >= firm_seq:
            note = (
                f"audit log damaged ({damage[1]}): state records may be missing, firm HALTED "
                "(fail closed) until a firm-wide reset"
            )
            self.restore_notes.append(note)
            alerts.error("kill switch restore: %s", note)
            states[FIRM] = HALTED
        elif damage is not None:
            self.restore_notes.append(f"audit log damaged ({damage[1]}); a later firm reset holds")
        with self._lock:
            self._publish_locked(states)
        if states:
            desc = ", ".join(f"{s.text}={TradingState(v).name}" for s, v in states.items())
            self.restore_notes.append(f"restored from the log: {desc}")
            log.warning("kill switch restored from %s: %s", directory, desc)

    # ---------------------------------------------------------------- clock

    def check_clock(self) -> dict[str, Any]:
        """Clock evidence now (see `clock_evidence`); alerts on
        `logging.getLogger("killswitch_audit.alerts")` when unsynchronised, unknown, or over
        `clock.max_error_us`."""
        ev = clock_evidence(self.clock_max_error_us)
        if not ev["ok"]:
            alerts.warning("clock: %s", ev["message"])
        return ev

    def stats(self) -> dict[str, Any]:
        """Counters: stops, denials, handler/trigger/audit failures, unknown reasons."""
        return {
            "stops": self.stops,
            "denials": self.denials,
            "handler_failures": self.handler_failures,
            "trigger_failures": self.trigger_failures,
            "audit_failures": self.audit_failures,
            "unknown_reasons": dict(self.unknown_reasons),
            "restricted": {s.text: TradingState(v).name for s, v in self._states.items()},
        }

    def __repr__(self) -> str:
        return (
            f"KillSwitch(restricted={self.stats()['restricted']}, handlers={len(self._handlers)})"
        )


class _NullLogger:
    """Accepts the audit calls and writes nothing (the warm-up switch's logger)."""

    directory = None
    closed = False

    def audit(self, *args: Any) -> int:
        return 0

    def audit_kill_switch(self, *args: Any) -> int:
        return 0

    def flush(self, timeout: Any = None, durable: bool = False) -> bool:
        return True


_warmed: set[bool] = set()


def _warm_up_once(config: Any, native_gate: bool) -> None:
    """Runs the stop path and the gate a few times on a scratch switch (null logger, no
    records, no monitor), once per process and gate kind."""
    if native_gate in _warmed:
        return
    _warmed.add(native_gate)
    try:
        ks = KillSwitch(
            _NullLogger(),
            latency_monitor=False,
            config=config,
            triggers=[],
            restore=False,
            native_gate=native_gate,
            check_clock=False,
            warm_up=False,
        )
        ks.add_stop_handler(lambda: None)
        order = Scope("warm-up", "warm-up", 0, "warm-up")
        for i in range(16):
            ks.allows(order)
            ks.emergency_stop(KillSwitchReason.MANUAL, 0, 0, 0, None if i & 1 else order)
            ks.allows(order)
            ks.allows(order, True)
            with ks._lock:
                ks._publish_locked({})
    except Exception as e:  # a warm-up must never stop a switch from starting
        log.debug("kill switch warm-up failed: %r", e)


def _denial_sink(ref: Any) -> Callable[[int, int, int], None]:
    """The native gate's denial callback, holding the switch weakly (no reference cycle
    through Rust, which the garbage collector cannot see)."""

    def sink(count: int, symbol_id: int, deny_scope_id: int) -> None:
        ks = ref()
        if ks is not None:
            ks._audit_denials(count, symbol_id, deny_scope_id)

    return sink


def _state_records(directory: Any) -> tuple[list[Any], Optional[tuple[int, str]]]:
    """STATE_CHANGE, RESET and TEXT records of a log, and the first damage met: (the highest
    seq read before it, what and where). With numpy each segment is filtered by kind in bulk
    and the segments after a damaged one are still read; without numpy, `read_audit_log`
    stops at the damage."""
    from .reader import read_audit_log

    kinds = (K_STATE_CHANGE, K_RESET, K_TEXT)
    out: list[Any] = []
    try:
        import numpy as np

        from .format import NUMPY_DTYPE_DESCR, RECORD_STRUCT, Record, kind_of
        from .reader import _scan_segment, list_segments
    except Exception:
        max_seq = -1
        try:
            for r in read_audit_log(directory, kinds=kinds):
                out.append(r)
                max_seq = max(max_seq, r.seq)
        except (AuditLogCorrupt, OSError, ValueError) as e:
            return out, (max_seq, str(e))
        return out, None
    dtype = np.dtype(NUMPY_DTYPE_DESCR)
    damage: Optional[tuple[int, str]] = None
    max_seq = -1
    for idx, seg in list_segments(directory):
        scan = _scan_segment(seg, idx)
        if scan.n_valid:
            arr = np.frombuffer(scan.data, dtype=dtype, count=scan.n_valid)
            max_seq = max(max_seq, int(arr["seq"].max()))
            for i in np.flatnonzero(np.isin(arr["kind"], kinds)):
                t = RECORD_STRUCT.unpack_from(scan.data, int(i) * 64)
                out.append(Record(t[0], t[1], t[2], kind_of(t[3]), *t[4:]))
        if scan.corrupt is not None and damage is None:
            off, why = scan.corrupt
            damage = (max_seq, str(AuditLogCorrupt(why, path=seg, offset=off)))
    return out, damage


def _i64(v: Any) -> int:
    try:
        v = int(v)
    except Exception:
        return 0
    return v if -(1 << 63) <= v < (1 << 63) else 0


def _u32(v: Any) -> int:
    try:
        v = int(v)
    except Exception:
        return 0
    return v if 0 <= v <= 0xFFFF_FFFF else 0
