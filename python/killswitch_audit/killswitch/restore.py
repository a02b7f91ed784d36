"""The restore at start of `KillSwitch` (`RestoreMixin`): the Rust core's `restore_state` reads
the log and the latch file; this installs what it found. Evidence that restricts trading is
believed wherever it is; a lift counts only when the writer's chain covers it; damage or a
scope that cannot be named restores as a firm-wide halt until an authenticated firm reset.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional

from ..format import TradingState
from .scope import FIRM, Scope, scope_id, scope_key

if TYPE_CHECKING:  # annotations only
    from .._native import AuditLogger, KillSwitchCore

__all__ = ["RestoreMixin"]

log = logging.getLogger("killswitch_audit.killswitch")
alerts = logging.getLogger("killswitch_audit.alerts")

ACTIVE = int(TradingState.ACTIVE)
HALTED = int(TradingState.HALTED)


class RestoreMixin:
    """`KillSwitch._restore`: the restrictions found in the log and the latch file."""

    # set by KillSwitch.__init__
    _core: KillSwitchCore
    audit_logger: AuditLogger
    _scopes: dict[int, Scope]
    directory: Optional[str]
    restore_notes: list[str]

    def _restore(self, native: Any) -> None:
        """Installs the restrictions restore finds in the log and the latch file."""
        found = native.restore_state(self.directory, native.logger_hmac_key(self.audit_logger))
        firm_lift = found["firm_lift_seq"]
        firm_lift = -1 if firm_lift is None else firm_lift
        by_id: dict[int, Scope] = {0: FIRM}
        for text in found["scope_texts"]:
            try:
                s = Scope.parse(text)
            except (ValueError, TypeError):
                continue
            by_id[scope_id(s)] = s  # keyed by the recomputed id: a forged text cannot redirect
        states: dict[Scope, int] = {}
        for sid, state, seq in found["standing"]:
            s = by_id.get(sid)
            if s is None:
                if seq > firm_lift:
                    self._fail_closed(
                        states,
                        f"scope id {sid:#x} (seq {seq}) is {TradingState(min(state, 2)).name} "
                        "but its scope text is missing",
                    )
                continue
            states[s] = max(states.get(s, ACTIVE), state)
        for seq, what in found["damage"]:
            if seq >= firm_lift:
                self._fail_closed(states, f"audit log damaged: {what}")
            else:
                self.restore_notes.append(f"damage before a later firm reset: {what}")
        restrictions = []
        for s, st in states.items():
            sid, stext = scope_key(s)
            self._scopes[sid] = s
            restrictions.append(((s[0], s[1], s[2], s[3]), sid, stext, st))
        self._core.restore(restrictions)
        if states:
            desc = ", ".join(f"{s.text}={TradingState(v).name}" for s, v in states.items())
            self.restore_notes.append(f"restored from the log: {desc}")
            log.warning("kill switch restored from %s: %s", self.directory, desc)

    def _fail_closed(self, states: dict[Scope, int], why: str) -> None:
        note = f"{why}: restored as a FIRM-WIDE HALT (fail closed) until a firm-wide reset"
        self.restore_notes.append(note)
        alerts.error("kill switch restore: %s", note)
        states[FIRM] = HALTED
