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
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from ..errors import ResetRefused
from ..format import KillSwitchReason, RecordKind, TradingState
from .clock import clock_evidence
from .report import HandlerOutcome, StopReport, StopStep, reason_code
from .scope import FIRM, Scope, check_scope, scope_id, scope_key
from .triggers import Trigger, triggers_from_config

if TYPE_CHECKING:  # annotations only: importing these here would be circular or heavy
    from .._native import AuditLogger
    from ..config import AuditConfig
    from ..monitor import LatencyMonitor
    from ..types import ClockEvidence, KillSwitchStats

__all__ = ["DENIAL_AUDIT_INTERVAL_NS", "KillSwitch"]

log = logging.getLogger("killswitch_audit.killswitch")
alerts = logging.getLogger("killswitch_audit.alerts")

_perf = time.perf_counter_ns

K_HANDLER_FAILURE = int(RecordKind.HANDLER_FAILURE)
K_STOP_STEP = int(RecordKind.STOP_STEP)
K_RESET = int(RecordKind.RESET)

ACTIVE = int(TradingState.ACTIVE)
REDUCING = int(TradingState.REDUCING)
HALTED = int(TradingState.HALTED)

#: at most one ORDER_DENIED record per this many ns (the record carries the count)
DENIAL_AUDIT_INTERVAL_NS = 100_000_000
#: how long a reset waits until its records are durable and covered by the chain (s)
RESET_TIMEOUT_S = 2.0
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


class KillSwitch:
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

    # ---------------------------------------------------------------- emergency stop

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

    # ---------------------------------------------------------------- triggers

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

    # ---------------------------------------------------------------- reset

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

    # ---------------------------------------------------------------- restore

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
