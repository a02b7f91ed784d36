"""The kill switch: scopes, triggers, the order gate, the stop, the audited reset, and the
restore from the log at start. Modules:

- `scope`: what a halt applies to, canonical texts and ids;
- `triggers`: the conditions that trip the switch, and the switch's `on_*` feeding them;
- `report`: reason codes, stop steps, the StopReport;
- `switch`: the KillSwitch, the front (construction, gate, handlers, state, stats);
- `stop`: the emergency stop sequence (emergency_stop, reduce_only);
- `reset`: the audited, authenticated reset;
- `restore`: the restore of latched halts at start;
- `clock`: clock evidence (RTS 25).

Record fields are documented in docs/FORMAT.md ("Kinds").
"""

from ..format import KillSwitchReason, TradingState  # re-exported: users import them from here
from .clock import clock_evidence
from .report import HandlerOutcome, StopReport, StopStep, reason_code
from .scope import FIRM, Scope, scope_id
from .switch import DENIAL_AUDIT_INTERVAL_NS, KillSwitch
from .triggers import (
    Drawdown,
    LossLimit,
    MessageRate,
    PositionLimit,
    RepeatedExecutions,
    Trigger,
    triggers_from_config,
)

__all__ = [
    "DENIAL_AUDIT_INTERVAL_NS",
    "FIRM",
    "Drawdown",
    "HandlerOutcome",
    "KillSwitch",
    "KillSwitchReason",
    "LossLimit",
    "MessageRate",
    "PositionLimit",
    "RepeatedExecutions",
    "Scope",
    "StopReport",
    "StopStep",
    "TradingState",
    "Trigger",
    "clock_evidence",
    "reason_code",
    "scope_id",
    "triggers_from_config",
]
