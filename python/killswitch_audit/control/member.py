"""A trading process's side of the host-local control plane: `join(ks)`.

`join` maps the control plane's state file, applies every latched scope to the process's
`KillSwitch` *before it returns* (so a process started during a halt is halted before its first
`allows()`), creates the process's presence file and starts the native watcher thread. That
thread parks in `poll` on inotify; when the table changes it calls `_Member.on_event` (the only
time it takes the GIL), which applies each new command through the switch's public API:

- halt -> `ks.emergency_stop(MANUAL, scope=...)`: the gate closes, the halt is latched in the
  process's own log, its stop handlers run; a TEXT record `control:{json}` attached to the
  KILL_SWITCH record names the command id, operator, scope, reason and origin host;
- reduce-only -> `ks.reduce_only(MANUAL, scope=...)`, audited the same way;
- reset -> `ks.reset(operator, note, scope, second_operator)`: the process's own reset rules
  apply (a refusal leaves the process halted; `status` shows it).

Then it reconciles: any table entry more restrictive than the process's own state is applied
(commands the ring no longer holds). Restrictions are always believed; a lift needs a reset
command from the journal-writing operators (the state file is writable only by them).

Control loss: when the state file is unreadable, invalid or removed for `control.loss_after_s`,
the watcher reports it and `control.on_control_loss` applies (halt: firm halt; reduce: firm
reduce-only; none: nothing), audited (KILL_SWITCH reason CONNECTIVITY + TEXT) and alerted on
`killswitch_audit.alerts`; contact returning is audited and alerted too, and the restriction
stays until an operator's reset.

Any failure inside the callback halts the firm (fail closed).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import secrets
import sys
import threading
import time
import weakref
from typing import Any, Optional

from ..format import KillSwitchReason, RecordKind, TradingState, encode_text_chunks
from ._layout import HALT, KIND_NAMES, REDUCE, RESET, TEXT_PREFIX, ControlError, Layout, hostname

log = logging.getLogger("killswitch_audit.control")
alerts = logging.getLogger("killswitch_audit.alerts")

_K_TEXT = int(RecordKind.TEXT)
_MEMBERS: weakref.WeakSet[Membership] = weakref.WeakSet()


def _audit_text(ks: Any, attached_seq: int, payload: dict[str, Any]) -> None:
    """TEXT records `control:{json}` attached to record `attached_seq` of the process's log."""
    if attached_seq < 0:
        return
    audit = ks.audit_logger.audit
    for idx, a, b, sym in encode_text_chunks(TEXT_PREFIX + json.dumps(payload, sort_keys=True)):
        audit(_K_TEXT, idx, sym, a, b, attached_seq, True)


class Membership:
    """A process joined to a control plane. `close()` (also at interpreter exit) stops the
    watcher and removes the presence file; the switch keeps whatever state it has."""

    def __init__(self, ks: Any, layout: Layout, watcher: Any, member: _Member):
        self.ks = ks
        self.layout = layout
        self._watcher = watcher
        self._member = member

    @property
    def directory(self) -> str:
        return str(self.layout.root)

    @property
    def presence_path(self) -> str:
        return str(self._member.presence)

    @property
    def last_command_id(self) -> int:
        return self._member.last_cmd

    @property
    def control_lost(self) -> bool:
        return self._member.lost

    @property
    def table(self) -> Any:
        """The native `ControlTable` the watcher maps now (for the gate: `state_for`)."""
        return self._watcher.table

    def close(self) -> None:
        self._watcher.stop()

    def __enter__(self) -> Membership:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Member:
    """The callback's state (only the watcher thread, or `join`, touches it)."""

    def __init__(self, ks: Any, policy: str, presence: str):
        self.ks = ks
        self.policy = policy
        self.presence = presence
        self.last_cmd = 0
        self.joined = False
        self.lost = False
        self.gate_closed_ns = 0
        self.lock = threading.Lock()

    # the watcher's callback: never raises (the binding would only print it)
    def on_event(self, kind: str, payload: Any) -> tuple[int, int, str]:
        with self.lock:
            try:
                if kind == "lost":
                    self._lost(str(payload))
                else:
                    if kind == "restored":
                        self._restored()
                    self._changed(payload)
            except BaseException as e:  # fail closed
                log.critical("control plane: applying %s failed (%r): halting the firm", kind, e)
                try:
                    self.ks.emergency_stop(KillSwitchReason.OTHER)
                except BaseException:
                    pass
            return self.last_cmd, self.gate_closed_ns, self._states_json()

    def _states_json(self) -> str:
        try:
            states = {s.text: TradingState(st).name for s, st in self.ks.halted_scopes.items()}
        except Exception as e:
            states = {"error": repr(e)}
        return json.dumps(states, sort_keys=True)

    def _changed(self, snap: dict[str, Any]) -> None:
        from ..killswitch import Scope

        if self.joined:
            for c in snap["commands"]:
                if c["id"] > self.last_cmd:
                    self._apply(c)
                    self.last_cmd = c["id"]
        # reconcile (at join: the whole table; later: entries of commands the ring lost)
        for e in snap["entries"]:
            scope = Scope(e["account"], e["strategy"], e["symbol_id"], e["venue"])
            if int(self.ks.trading_state(scope)) < e["state"]:
                self._restrict(
                    e["state"],
                    scope,
                    {"command_id": e["command_id"], "source": "control table", "seq": e["seq"]},
                )
        self.last_cmd = max(self.last_cmd, snap["last_command_id"])
        self.joined = True

    def _restrict(self, state: int, scope: Any, info: dict[str, Any]) -> None:
        t0 = time.time_ns()
        if state >= int(TradingState.HALTED):
            rep = self.ks.emergency_stop(KillSwitchReason.MANUAL, scope=scope)
        else:
            rep = self.ks.reduce_only(KillSwitchReason.MANUAL, scope=scope)
        self.gate_closed_ns = t0 + max(0, rep.trigger_to_block_ns)
        _audit_text(self.ks, rep.seq, {**info, "scope": scope.text})

    def _apply(self, c: dict[str, Any]) -> None:
        from ..errors import ResetRefused
        from ..killswitch import Scope

        info = {
            "command_id": c["id"],
            "kind": KIND_NAMES.get(c["kind"], str(c["kind"])),
            "operator": c["operator"],
            "second_operator": c["second_operator"],
            "host": c["host"],
            "reason": c["reason"],
            "journal_seq": c["seq"],
        }
        try:
            scope = Scope.parse(c["scope"])
        except Exception as e:
            if c["kind"] == RESET:
                log.error("control command %d: bad scope %r (%s): reset ignored", c["id"], c, e)
                return
            scope = Scope()  # a halt of an unreadable scope halts the firm
        if c["kind"] in (HALT, REDUCE):
            state = int(TradingState.HALTED if c["kind"] == HALT else TradingState.REDUCING)
            self._restrict(state, scope, info)
        elif c["kind"] == RESET:
            if scope not in self.ks.halted_scopes:
                return  # nothing latched here for that scope
            note = f"{c['reason']} [control command {c['id']} from {c['host']}]"
            try:
                self.ks.reset(
                    c["operator"], note, scope=scope, second_operator=c["second_operator"] or None
                )
            except ResetRefused as e:
                alerts.error("control reset %d refused by this process: %s", c["id"], e)

    def _lost(self, why: str) -> None:
        alerts.critical("control plane lost: %s; policy on_control_loss=%s", why, self.policy)
        info = {"event": "control_lost", "why": why, "policy": self.policy}
        if self.policy in ("halt", "reduce"):
            t0 = time.time_ns()
            if self.policy == "halt":
                rep = self.ks.emergency_stop(KillSwitchReason.CONNECTIVITY)
            else:
                rep = self.ks.reduce_only(KillSwitchReason.CONNECTIVITY)
            self.gate_closed_ns = t0 + max(0, rep.trigger_to_block_ns)
            _audit_text(self.ks, rep.seq, info)
        else:
            self._audit_event(info)
        self.lost = True  # last: whoever sees the flag sees the restriction applied

    def _restored(self) -> None:
        if self.lost:
            alerts.warning(
                "control plane contact restored; restrictions applied on loss stay until reset"
            )
            self._audit_event({"event": "control_restored"})
            self.lost = False

    def _audit_event(self, info: dict[str, Any]) -> None:
        """A TEXT record standing alone (attached to a USER marker record of its own)."""
        try:
            seq = self.ks.audit_logger.audit(int(RecordKind.USER), 14, 0, 0, 0, 0, True)
            _audit_text(self.ks, seq, info)
        except Exception as e:
            log.error("control plane: could not audit %s: %r", info, e)


def join(
    ks: Any, config: Any = None, *, location: Any = None, name: Optional[str] = None
) -> Optional[Membership]:
    """Joins `ks` to the control plane that `location`, `$KILLSWITCH_AUDIT_CONTROL` or
    `config.control.directory` names (None: `ks.config`): a directory (host-local) or a
    `nats://` URL (NATS JetStream, a `NatsMembership`). Returns None when none is named.
    Raises ControlError when the named plane cannot be joined (missing, bad file)."""
    from .. import _native
    from ._layout import named_location, resolve

    cfg = config if config is not None else getattr(ks, "config", None)
    if location is None and named_location(cfg) is None:
        return None
    where = resolve(location, cfg)
    if isinstance(where, str):  # a nats:// URL: the firm-wide plane (nats_member.py)
        from .nats_member import join_nats

        return join_nats(ks, cfg, where, name)  # type: ignore[return-value]
    layout = Layout(where)
    ctl = getattr(cfg, "control", None)
    policy = getattr(ctl, "on_control_loss", "reduce")
    heartbeat = float(getattr(ctl, "heartbeat_s", 1.0))
    loss_after = float(getattr(ctl, "loss_after_s", 5.0))
    if not layout.state.exists():
        raise ControlError(
            f"control plane {layout.root}: no state file (an operator creates it with "
            "`killswitch-audit status` or any halt)"
        )
    presence = layout.procs / f"{os.getpid()}-{secrets.token_hex(4)}.presence"
    member = _Member(ks, policy, str(presence))
    static = {
        "host": hostname(),
        "pid": os.getpid(),
        "uid": os.getuid(),
        "name": name or os.path.basename(sys.argv[0] or "python"),
        "log_dir": str(getattr(ks.audit_logger, "directory", "") or ""),
        "started_ns": time.time_ns(),
    }
    try:
        watcher = _native.ControlWatcher(
            str(layout.state),
            str(presence),
            json.dumps(static, sort_keys=True),
            member.on_event,
            heartbeat_s=heartbeat,
            loss_after_s=loss_after,
        )
    except (OSError, ValueError) as e:
        raise ControlError(f"cannot join control plane {layout.root}: {e}") from e
    m = Membership(ks, layout, watcher, member)
    # From here on the gate itself consults the mapped table on every `allows()`: a halt
    # written by an operator closes it at once, whether or not this process's watcher thread
    # has run yet (a stopped, descheduled or busy process is halted all the same).
    core = getattr(ks, "_core", None)
    if core is not None and watcher.table is not None:
        core.attach_control(watcher.table)
    _MEMBERS.add(m)
    log.info("joined control plane %s (presence %s)", layout.root, presence)
    return m


def _leave_all() -> None:
    # before interpreter finalization: a native thread must not attach after it
    for m in list(_MEMBERS):
        try:
            m.close()
        except Exception:
            pass


atexit.register(_leave_all)
