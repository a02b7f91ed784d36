"""What a stop reports: reason codes, stop steps, handler outcomes and the StopReport."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

from ..format import KillSwitchReason, TradingState
from .scope import Scope

__all__ = ["HandlerOutcome", "StopReport", "StopStep", "reason_code"]


class StopStep:
    """`code` values of STOP_STEP records (`a`: ns since the trigger, `c`: the KILL_SWITCH seq)."""

    BLOCKED = 1  #: the gate denies new orders; `b`: ns until KILL_SWITCH/STATE_CHANGE were audited
    HANDLERS_DONE = 3  #: every stop handler has returned (or raised)
    DURABLE = 4  #: the log was durable within the wait bound
    DURABLE_TIMEOUT = 5  #: the bounded wait for durability ran out
    HANDLER_BASE = 1000  #: 1000 + i: stop handler i returned; `b`: its own elapsed ns


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
    try:
        r = _REASON_LOOKUP.get(reason) if not isinstance(reason, bool) else None
    except TypeError:  # unhashable: a dict, a list...
        r = None
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
