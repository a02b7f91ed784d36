"""The enumerations of the format: record kinds, kill-switch reasons, trading states, rings,
clock states; `kind_of` maps a kind byte to its member (or the int of a newer kind)."""

from __future__ import annotations

from enum import IntEnum
from typing import Union

# --------------------------------------------------------------------------------------------
# Enumerations


class _NamedIntEnum(IntEnum):
    """An IntEnum whose str() and f-string form are its NAME on every Python version (3.11
    changed IntEnum.__str__ to the number); format specs for numbers still give the number."""

    def __str__(self) -> str:
        return self.name

    def __format__(self, spec: str) -> str:
        if spec and spec[-1] in "bcdoxXn":
            return int.__format__(int(self), spec)
        return format(self.name, spec)


class RecordKind(_NamedIntEnum):
    """Record kinds (docs/FORMAT.md, "Kinds"); 64 and above are written by the flusher."""

    KILL_SWITCH = 1
    TRADE = 2
    ORDER_SENT = 3
    ORDER_CANCELLED = 4
    RISK_CHECK = 5
    STATE_CHANGE = 6
    RESET = 7
    HANDLER_FAILURE = 8
    TEXT = 9
    ORDER_DENIED = 10
    STOP_STEP = 11
    USER = 12
    GAP = 64
    CLOCK = 65
    SESSION_START = 66
    SESSION_END = 67


SYSTEM_KINDS = frozenset(
    {RecordKind.GAP, RecordKind.CLOCK, RecordKind.SESSION_START, RecordKind.SESSION_END}
)


class KillSwitchReason(_NamedIntEnum):
    """Why the kill switch fired (the `code` of a KILL_SWITCH record)."""

    DAILY_LOSS_LIMIT = 1
    POSITION_LIMIT = 2
    DRAWDOWN = 3
    MANUAL = 4
    MESSAGE_RATE = 5
    REPEATED_EXECUTIONS = 6
    TRIGGER_FAILURE = 7
    PRICE_COLLAR = 8
    CONNECTIVITY = 9
    RISK_SYSTEM = 10
    OTHER = 255


class TradingState(_NamedIntEnum):
    """Trading state of a scope (STATE_CHANGE `code`, RESET `a`/`b`)."""

    ACTIVE = 0
    REDUCING = 1
    HALTED = 2


class Ring(_NamedIntEnum):
    """Which ring a GAP record speaks of (its `code`)."""

    MAIN = 0
    EMERGENCY = 1


class ClockSync(_NamedIntEnum):
    """Synchronisation state in a CLOCK record (its `code`)."""

    SYNCHRONISED = 0
    UNSYNCHRONISED = 1
    UNKNOWN = 2


_KIND_BY_VALUE: dict[int, RecordKind] = {int(k): k for k in RecordKind}
_REASON_BY_VALUE: dict[int, KillSwitchReason] = {int(r): r for r in KillSwitchReason}


def kind_of(value: int) -> Union[RecordKind, int]:
    """`RecordKind(value)` when known, else the int itself (a newer writer's kind)."""
    return _KIND_BY_VALUE.get(value, value)
