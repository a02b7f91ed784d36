"""The emergency stop sequence of `KillSwitch` (`StopMixin`): `emergency_stop` closes the gate
through the Rust core, audits and latches the halt, runs the stop handlers (isolated, timed,
not re-run by a nested stop), records the steps, waits until the records are in the file and
optionally until they are durable; `reduce_only` is the same sequence to REDUCING without the
handlers. A stop never raises: a bad scope halts the firm, a bad number is recorded as 0.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from ..format import KillSwitchReason, RecordKind, TradingState
from .report import HandlerOutcome, StopReport, StopStep, reason_code
from .scope import FIRM, Scope, check_scope, scope_key

if TYPE_CHECKING:  # annotations only
    from .._native import AuditLogger, KillSwitchCore

__all__ = ["PERSIST_TIMEOUT_S", "Handler", "Reason", "StopMixin"]

log = logging.getLogger("killswitch_audit.killswitch")
alerts = logging.getLogger("killswitch_audit.alerts")

_perf = time.perf_counter_ns

K_HANDLER_FAILURE = int(RecordKind.HANDLER_FAILURE)
K_STOP_STEP = int(RecordKind.STOP_STEP)

REDUCING = int(TradingState.REDUCING)
HALTED = int(TradingState.HALTED)

#: how long emergency_stop waits until its records are in the segment file (s)
PERSIST_TIMEOUT_S = 1.0

_U32 = 0xFFFF_FFFF
_I64 = 1 << 63

Handler = Callable[[], Any]
#: what a stop accepts as its reason; anything else is still taken at run time, as OTHER with
#: its repr kept (a stop never fails on its reason)
Reason = Union[KillSwitchReason, int, str]


def _number(v: Any, lo: int, hi: int, name: str, errors: list[str]) -> int:
    """`v` as an int in [lo, hi]; anything else is recorded as 0 and named in `errors`."""
    if type(v) is int and lo <= v <= hi:
        return v
    try:
        if not isinstance(v, bool):
            iv = int(v)
            if lo <= iv <= hi and iv == v:
                return iv
    except Exception:
        pass
    try:
        shown = repr(v)[:80]
    except Exception:
        shown = f"<unprintable {type(v).__name__}>"
    errors.append(f"bad {name} {shown}: recorded as 0")
    return 0


class StopMixin:
    """`KillSwitch.emergency_stop` and `reduce_only`, and the waits they make."""

    # set by KillSwitch.__init__
    _core: KillSwitchCore
    audit_logger: AuditLogger
    _scopes: dict[int, Scope]
    _handlers: tuple[tuple[str, Handler], ...]
    _in_handlers: threading.local
    _record_latency: Optional[Callable[[str, int], Any]]
    unknown_reasons: Counter[str]
    audit_failures: int
    handler_failures: int
    stops: int
    last_report: Optional[StopReport]
    persist_timeout_s: float
    default_wait_durable_s: float

    def emergency_stop(
        self,
        reason: Reason = KillSwitchReason.MANUAL,
        symbol_id: int = 0,
        position_size: int = 0,
        pnl_cents: int = 0,
        scope: Optional[Scope] = None,
        wait_durable: Union[bool, float, None] = None,
        *,
        _target: int = HALTED,
    ) -> StopReport:
        """Halts `scope` (None: the firm): close the gate, audit, latch, run the stop handlers,
        record the steps, wait until the records are in the file, optionally wait (bounded,
        in seconds; None: the config's `kill_switch.wait_durable_ms`; True: 1 s) until durable
        against power loss. Never raises; returns a StopReport."""
        t0 = _perf()
        errors: list[str] = []
        core = self._core
        sc = FIRM
        code, text = int(KillSwitchReason.OTHER), None
        seq = -1
        new = _target
        t_block = t_audit = t0
        try:
            if type(scope) is Scope:
                sc = scope
            elif scope is not None:
                try:
                    sc = check_scope(scope)
                except Exception as e:  # fail closed: a malformed scope halts the firm
                    errors.append(f"bad scope ({type(scope).__name__}: {e}): halting the firm")
            code, text = reason_code(reason)
            sid, stext = scope_key(sc)
            seq, _old, new, t_block, t_audit, latched = core.stop(
                (sc[0], sc[1], sc[2], sc[3]),
                sid,
                stext,
                _target,
                code,
                _number(symbol_id, 0, _U32, "symbol_id", errors),
                _number(position_size, -_I64, _I64 - 1, "position_size", errors),
                _number(pnl_cents, -_I64, _I64 - 1, "pnl_cents", errors),
            )
            self._scopes[sid] = sc
            if seq < 0 and core.audits:
                self.audit_failures += 1
                errors.append(
                    "the audit engine refused the halt's records (closed or ring full); "
                    + ("it is latched in halt.state" if latched else "it is NOT latched either")
                )
                alerts.critical("emergency_stop: %s", errors[-1])
        except BaseException as e:  # the gate must close whatever happened above
            errors.append(f"stop sequence failed: {e!r}: halting the firm")
            log.critical("emergency_stop: %s", errors[-1])
            try:
                seq, _old, new, t_block, t_audit, _ = core.stop(
                    (None, None, None, None), 0, "firm", HALTED, code, 0, 0, 0
                )
                sc = FIRM
            except BaseException as e2:  # pragma: no cover - the core call does not raise
                errors.append(f"firm-wide fallback failed: {e2!r}")

        # stop handlers, each isolated and timed; not re-run by a stop nested in one of them
        outcomes: list[HandlerOutcome] = []
        steps: list[int] = []
        prev = t_audit
        nested = getattr(self._in_handlers, "active", False)
        if _target == HALTED and not nested:
            self._in_handlers.active = True
            try:
                for i, (name, fn) in enumerate(self._handlers):
                    try:
                        fn()
                    except BaseException as e:  # a stop must finish, whatever a handler does
                        now = _perf()
                        outcomes.append(HandlerOutcome(name, False, now - prev, repr(e)))
                        self._handler_failed(i, name, now - prev, seq, e)
                    else:
                        now = _perf()
                        outcomes.append(HandlerOutcome(name, True, now - prev, None))
                    steps.append(now - t0)
                    prev = now
            finally:
                self._in_handlers.active = False
        elif nested:
            errors.append("stop nested in a stop handler: handlers not run again")
        t_done = _perf()
        self.stops += 1

        # step records, the unknown reason's text, latencies
        audit = core.audit
        if seq >= 0:
            audit(K_STOP_STEP, StopStep.BLOCKED, 0, t_block - t0, t_audit - t0, seq, True)
            for i, t in enumerate(steps):
                audit(K_STOP_STEP, StopStep.HANDLER_BASE + i, 0, t, outcomes[i][2], seq, True)
            audit(K_STOP_STEP, StopStep.HANDLERS_DONE, 0, t_done - t0, 0, seq, True)
            if text is not None:
                self.unknown_reasons[text] += 1
                core.text(seq, "reason:" + text)
        rec = self._record_latency
        if rec is not None:
            try:
                rec("emergency_stop", t_done - t0)
                rec("kill_switch_audit", max(0, t_audit - t_block))
            except Exception as e:
                log.warning("latency monitor record failed: %r", e)

        # the records in the file before returning (kill -9 from here on loses nothing)
        if seq >= 0 and not self._persist(self.persist_timeout_s):
            errors.append(
                f"halt records not in the file within {self.persist_timeout_s:g} s "
                "(disk full or stalled?); the halt is latched in halt.state"
            )
            alerts.critical("emergency_stop: %s", errors[-1])
        durable = self._wait_durable(wait_durable, seq, t0, errors)
        report = StopReport(
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
        )
        self.last_report = report
        return report

    def reduce_only(
        self,
        reason: Reason = KillSwitchReason.MANUAL,
        scope: Optional[Scope] = None,
        wait_durable: Union[bool, float, None] = None,
    ) -> StopReport:
        """Puts `scope` in REDUCING: only orders that reduce the position pass. Audited by a
        STATE_CHANGE (no KILL_SWITCH record: that one always means a halt); the stop handlers
        do NOT run. A HALTED scope stays HALTED. Never raises."""
        return self.emergency_stop(reason, 0, 0, 0, scope, wait_durable, _target=REDUCING)

    def _persist(self, timeout_s: float) -> bool:
        """Waits (GIL released) until every kill-switch record so far is in the file."""
        lg = self.audit_logger
        try:
            flush_emergency = getattr(lg, "flush_emergency", None)
            if flush_emergency is not None:
                return bool(flush_emergency(timeout_s))
            return bool(lg.flush(timeout_s))
        except Exception as e:
            log.error("kill switch: waiting for the file failed: %r", e)
            return False

    def _wait_durable(
        self, wait_durable: Union[bool, float, None], seq: int, t0: int, errors: list[str]
    ) -> Optional[bool]:
        if wait_durable is None:
            wait_s = self.default_wait_durable_s
        elif wait_durable is True:
            wait_s = 1.0
        elif wait_durable is False:
            wait_s = 0.0
        else:
            try:
                wait_s = min(max(0.0, float(wait_durable)), 60.0)
            except Exception:
                wait_s = 1.0
            if wait_s != wait_s:  # NaN
                wait_s = 1.0
        if wait_s <= 0:
            return None
        try:
            durable = bool(self.audit_logger.flush(wait_s, durable=True))
        except Exception as e:
            durable = False
            errors.append(f"durability wait failed: {e!r}")
        if seq >= 0:
            step = StopStep.DURABLE if durable else StopStep.DURABLE_TIMEOUT
            self._core.audit(K_STOP_STEP, step, 0, _perf() - t0, 0, seq, True)
        if not durable:
            log.error("emergency_stop: halt record not durable within %.3f s", wait_s)
        return durable

    def _handler_failed(self, i: int, name: str, elapsed: int, ks_seq: int, e: BaseException):
        self.handler_failures += 1
        log.error("stop handler %d (%s) raised %r; continuing with the next", i, name, e)
        try:
            hseq = self._core.audit(K_HANDLER_FAILURE, i, 0, elapsed, 0, max(ks_seq, 0), True)
            if hseq >= 0:
                self._core.text(hseq, f"handler {name}: {e!r}"[:400])
        except Exception:
            self.audit_failures += 1
