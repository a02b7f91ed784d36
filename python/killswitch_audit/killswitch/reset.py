"""The audited reset of `KillSwitch` (`ResetMixin`): `reset` checks who and why (a second
operator when the config asks for one), writes RESET + STATE_CHANGE through the Rust core,
waits until the writer's hash chain covers them (so restore can authenticate them) and only
then opens the gate; a refused reset is audited as refused and raises `ResetRefused`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional

from ..errors import ResetRefused
from ..format import RecordKind, TradingState
from .scope import Scope, check_scope, scope_key
from .triggers import Trigger

if TYPE_CHECKING:  # annotations only
    from .._native import AuditLogger, KillSwitchCore

__all__ = ["RESET_TIMEOUT_S", "ResetMixin"]

log = logging.getLogger("killswitch_audit.killswitch")

K_RESET = int(RecordKind.RESET)

#: how long a reset waits until its records are durable and covered by the chain (s)
RESET_TIMEOUT_S = 2.0


class ResetMixin:
    """`KillSwitch.reset` and the refusal and chain wait it makes."""

    # set by KillSwitch.__init__ (and `trading_state`, a KillSwitch method)
    _core: KillSwitchCore
    audit_logger: AuditLogger
    _scopes: dict[int, Scope]
    _triggers: list[Trigger]
    require_second_operator: bool
    audit_failures: int

    if TYPE_CHECKING:

        def trading_state(self, scope: Optional[Scope] = None) -> TradingState: ...

    def reset(
        self,
        operator: str,
        note: Optional[str] = None,
        scope: Optional[Scope] = None,
        second_operator: Optional[str] = None,
        *,
        reason: Optional[str] = None,
    ) -> TradingState:
        """Lifts the restriction of `scope` (None: the firm scope itself) back to ACTIVE, and
        returns the state the firm scope is in afterwards (a `TradingState`).

        Needs a named `operator` and a reason (`note`, or `reason=` as the control plane and
        the CLI call it); with `kill_switch.reset.
        require_second_operator` also a `second_operator` other than `operator`. Refused (and
        audited as refused, then `ResetRefused` raised) when one is missing, the scope is not
        restricted, the records cannot be written, or they cannot be made verifiable (durable
        and covered by the hash chain) within `RESET_TIMEOUT_S`: then the halt stays."""
        if note is not None and reason is not None and note != reason:
            raise TypeError("reset: give the reason once (note= and reason= are the same)")
        note = note if note is not None else reason
        sc = check_scope(scope)
        op = operator.strip() if isinstance(operator, str) else ""
        why = note.strip() if isinstance(note, str) else ""
        second = second_operator.strip() if isinstance(second_operator, str) else ""
        sid, stext = scope_key(sc)
        core = self._core
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
        if refusal is None:
            try:
                rseq, _old = core.begin_reset(sid)
            except RuntimeError as e:
                refusal = str(e)
                if refusal == "not restricted":
                    refusal = f"scope {stext} is not halted (state ACTIVE): nothing to reset"
        if refusal is not None:
            self._refuse(sid, stext, op, second, why, refusal)
        core.text(rseq, f"operator={op} second={second} scope={stext} note={why}"[:600])
        if not self._verifiable(RESET_TIMEOUT_S):
            core.abort_reset()
            self._refuse(
                sid,
                stext,
                op,
                second,
                why,
                f"the reset could not be chained within {RESET_TIMEOUT_S:g} s "
                f"(disk full or stalled?): {stext} stays restricted",
            )
        try:
            core.finish_reset()
        except RuntimeError as e:
            self._refuse(sid, stext, op, second, why, str(e))
        for t in self._triggers:
            if t.tripped and self.trading_state(t.scope) == TradingState.ACTIVE:
                t.rearm()
        log.warning("kill switch reset by %s (scope %s): %s", op, stext, why)
        return self.trading_state(None)

    def _refuse(self, sid: int, stext: str, op: str, second: str, why: str, refusal: str):
        """Audits a refused reset (RESET with code 1 and a TEXT saying why) and raises."""
        try:
            state = self._core.state(self._scopes.get(sid))
            rseq = self._core.audit(K_RESET, 1, 0, state, state, sid, True)
            if rseq >= 0:
                self._core.text(
                    rseq,
                    f"REFUSED operator={op!r} second={second!r} scope={stext} note={why!r}: "
                    f"{refusal}"[:600],
                )
            else:
                self.audit_failures += 1
        except Exception as e:
            self.audit_failures += 1
            log.error("refused reset could not be audited: %r", e)
        log.warning("kill-switch reset refused: %s", refusal)
        raise ResetRefused(refusal)

    def _verifiable(self, timeout_s: float) -> bool:
        """Waits until everything audited so far is in the file and covered by the writer's
        chain head (what restore needs to believe the reset; required), then, bounded by the
        same timeout, until it is durable against power loss (logged when not: the engine's
        syncer runs only on an otherwise idle CPU, so a saturated machine delays it)."""
        lg = self.audit_logger
        try:
            if not lg.flush(timeout_s, chained=True):
                return False
        except Exception as e:
            log.error("kill-switch reset: waiting for the chain failed: %r", e)
            return False
        try:
            if not lg.flush(timeout_s, durable=True):
                log.error("kill-switch reset: not durable within %.1f s (chained: yes)", timeout_s)
        except Exception as e:
            log.error("kill-switch reset: durability wait failed: %r", e)
        return True
