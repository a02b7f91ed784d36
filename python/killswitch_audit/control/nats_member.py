"""A trading process's side of the NATS JetStream control plane: `join(ks)` with a `nats://`
location lands here (docs/CONTROL.md).

The NATS client runs on its own asyncio loop in a daemon thread. Before `join` returns it reads
every latched scope of the `ksa_latched` bucket and writes them into a *process-private*
`ControlTable` (a file in a 0700 temp dir), which the gate consults lock-free on every
`allows()` (`attach_control`, the same path as the host-local plane's shared table) — so a
process started during a halt is halted before its first `allows()`. Then it watches the
bucket: each change is written to the private table first (the gate is closed from that
moment, whatever the GIL does) and then handed to the host-local plane's `_Member` (member.py),
which applies the command through the switch's public API and audits it into the process's own
log (operator, scope, reason, command id, origin host). Commands are ordered (the bucket's
revision is the command id) and applied once (ids, and the command's uuid).

Presence: a heartbeat every `control.heartbeat_s` (and at once after each command) in the
`ksa_presence` bucket, read by `status` and by `halt`/`reset` waiting for acks.

Control loss: no server connection for `control.loss_after_s` applies `on_control_loss`
(member.py `_Member._lost`: audited, alerted); contact returning is audited, the watch is
restarted and every command missed meanwhile is applied in order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
from typing import Any, Optional

from ..format import KillSwitchReason, TradingState
from . import _nats
from ._layout import HALT, REDUCE, RESET, ControlError, hostname
from .member import _MEMBERS, _Member

log = logging.getLogger("killswitch_audit.control")

_KINDS = {"halt": HALT, "reduce_only": REDUCE, "reset": RESET}
#: join gives up after this (a cluster electing leaders takes seconds); each step: _STEP_S
_JOIN_TIMEOUT_S = 30.0
_STEP_S = 9.0
_PRESENCE_TTL_S = 30.0
_SEEN_MAX = 4096


def _entry_of(value: dict[str, Any], revision: int) -> dict[str, Any]:
    from ..killswitch import Scope

    fields = [value.get(k) for k in ("account", "strategy", "symbol_id", "venue")]
    return {
        "state": int(value["state"]),
        "account": fields[0],
        "strategy": fields[1],
        "symbol_id": fields[2],
        "venue": fields[3],
        "scope_id": Scope(*fields).scope_id,
        "command_id": revision,
        "seq": 0,
    }


_FIRM_HALT = {"state": int(TradingState.HALTED), "scope": "firm", "kind": "halt"}


class NatsMembership:
    """A process joined to a NATS control plane (the interface of `Membership`)."""

    def __init__(self, ks: Any, url: _nats.NatsURL, cfg: Any, name: Optional[str]):
        ctl = getattr(cfg, "control", None)
        self.ks = ks
        self.url = url
        self.policy = str(getattr(ctl, "on_control_loss", "reduce"))
        self.heartbeat_s = max(0.05, float(getattr(ctl, "heartbeat_s", 1.0)))
        self.loss_after_s = float(getattr(ctl, "loss_after_s", 5.0))
        self.key = _nats.presence_key(hostname(), os.getpid(), secrets.token_hex(4))
        self._member = _Member(ks, self.policy, self.key)
        self.static = {
            "host": hostname(),
            "pid": os.getpid(),
            "uid": os.getuid(),
            "name": name or os.path.basename(sys.argv[0] or "python"),
            "log_dir": str(getattr(ks.audit_logger, "directory", "") or ""),
            "started_ns": time.time_ns(),
            "heartbeat_s": self.heartbeat_s,
        }
        from .. import _native

        self._dir = tempfile.mkdtemp(prefix="ksa-nats-")  # 0700
        path = os.path.join(self._dir, "state")
        _native.ControlTable.create(path, 0o600)
        self._writer = _native.ControlTable(path, writable=True)
        self._table = _native.ControlTable(path)
        self._latched: dict[str, dict[str, Any]] = {}  # key -> entry for the table
        self._last_rev = 0
        self._seen: dict[str, None] = {}  # uuids applied (ordered: oldest dropped first)
        self._states = "{}"
        self._nc: Any = None
        self._kv: Any = None
        self._presence: Any = None
        self._watcher: Any = None
        self._watch_task: Optional[asyncio.Task[None]] = None
        self._loss_timer: Optional[asyncio.TimerHandle] = None
        self._closed = False
        #: off-host anchor of this process's log (None: not made yet; False: disabled)
        self._anchor: Any = None if getattr(ctl, "anchor", True) else False
        self._anchor_mark: Any = None
        #: the gate consults the private table (set by `join_nats`)
        self.attached = False
        self._loop = _nats.LoopThread(f"ksa-nats-{os.getpid()}")

    # ------------------------------------------------------------------ the Membership API

    @property
    def directory(self) -> str:
        return self.url.redacted

    @property
    def presence_path(self) -> str:
        return self.key

    @property
    def last_command_id(self) -> int:
        return self._member.last_cmd

    @property
    def control_lost(self) -> bool:
        return self._member.lost

    @property
    def table(self) -> Any:
        return self._table

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._loop.run(self._shutdown(), 3.0)
        except Exception as e:
            log.debug("control plane: leaving %s: %r", self.url.redacted, e)
        self._loop.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> NatsMembership:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ joining

    def start(self) -> None:
        """Connects, reads every latched scope into the private table and applies them (all
        before returning), then starts watching and heart-beating."""
        try:
            self._loop.run(self._start(), _JOIN_TIMEOUT_S)
        except Exception as e:
            self._closed = True
            self._loop.stop()
            shutil.rmtree(self._dir, ignore_errors=True)
            if isinstance(e, ControlError):
                raise
            if isinstance(e, TimeoutError):
                raise ControlError(
                    f"cannot join control plane {self.url.redacted}: no server answered with "
                    f"the latched scopes within {_JOIN_TIMEOUT_S:g} s (the switch fails closed: "
                    "it is not created)"
                ) from e
            raise ControlError(f"cannot join control plane {self.url.redacted}: {e!r}") from e

    async def _start(self) -> None:
        self._nc = await _nats.connect(
            self.url,
            name=f"killswitch-audit member {self.static['name']} pid {os.getpid()}",
            on_error=self._on_error,
            on_disconnect=self._on_disconnect,
            on_reconnect=self._on_reconnect,
        )
        js = self._nc.jetstream(timeout=_nats.API_TIMEOUT_S)
        end = time.monotonic() + _STEP_S
        self._kv = await _nats.retry(lambda: _nats.latch_bucket(js, self.url, True), end)
        self._presence = await _nats.retry(
            lambda: _nats.presence_bucket(js, self.url, _PRESENCE_TTL_S, True), end
        )
        await self._watch(initial=True)
        await self._beat()
        asyncio.get_running_loop().create_task(self._heartbeats())

    async def _watch(self, initial: bool) -> None:
        """(Re)starts the watch: reads the last entry of every key (the init marker None ends
        them), rebuilds the latched set, applies what was missed, then follows updates."""
        if self._watcher is not None:
            try:
                await self._watcher.stop()
            except Exception:
                pass
        if self._watch_task is not None:
            self._watch_task.cancel()
        end = time.monotonic() + _STEP_S
        self._watcher = await _nats.retry(self._kv.watchall, end)
        keys: set[str] = set()
        while True:
            e = await self._watcher.updates(timeout=_STEP_S)
            if e is None:
                break
            keys.add(e.key)
            cmd = self._take(e, apply=not initial)
            if cmd is not None:  # missed while disconnected: applied in order
                self._publish_and_apply(cmd)
        for k in set(self._latched) - keys:  # purged meanwhile
            self._latched.pop(k)
        self._publish_and_apply(self._join_command() if initial else None)
        self._watch_task = asyncio.get_running_loop().create_task(self._follow(self._watcher))

    async def _follow(self, watcher: Any) -> None:
        async for e in watcher:
            if e is None:
                continue
            try:
                cmd = self._take(e, apply=True)
                self._publish_and_apply(cmd)
            except Exception as err:  # fail closed
                log.critical("control plane: applying %r failed (%r): halting the firm", e, err)
                try:
                    self.ks.emergency_stop(KillSwitchReason.OTHER)
                except Exception:
                    pass
            await self._beat()

    def _take(self, e: Any, apply: bool) -> Optional[dict[str, Any]]:
        """Folds one bucket entry into the latched set; returns the command to apply (a new
        revision with an unseen uuid) or None. With apply=False (initial read) the
        command is only remembered."""
        rev = int(e.revision)
        if e.operation in ("DEL", "PURGE"):
            self._latched.pop(e.key, None)
            self._last_rev = max(self._last_rev, rev)
            return None
        try:
            value = json.loads(e.value)
            if not isinstance(value, dict) or int(value["state"]) not in (0, 1, 2):
                raise ValueError("not a latch entry")
        except (ValueError, KeyError, TypeError) as err:
            # unreadable latch: believe the worst (a firm halt), loudly
            log.critical(
                "control plane: unreadable latch %s rev %d (%r): firm halt", e.key, rev, err
            )
            value = {**_FIRM_HALT, "reason": f"unreadable latch entry {e.key}"}
        if int(value["state"]) > 0:
            self._latched[e.key] = _entry_of(value, rev)
        else:
            self._latched.pop(e.key, None)
        uid = str(value.get("command", ""))
        new = rev > self._last_rev and (not uid or uid not in self._seen)
        self._last_rev = max(self._last_rev, rev)
        if uid:
            self._seen[uid] = None
            if len(self._seen) > _SEEN_MAX:
                self._seen.pop(next(iter(self._seen)))
        if not new or not apply:
            return None
        return self._command_of(value, rev)

    @staticmethod
    def _command_of(value: dict[str, Any], rev: int) -> dict[str, Any]:
        return {
            "id": rev,
            "kind": _KINDS.get(str(value.get("kind")), HALT),
            "written_ns": int(value.get("written_ns", 0)),
            "seq": 0,
            "scope": str(value.get("scope", "firm"))[:255],
            "operator": str(value.get("operator", ""))[:64],
            "second_operator": str(value.get("second_operator", ""))[:64],
            "host": str(value.get("host", ""))[:64],
            "reason": str(value.get("reason", "")),
        }

    def _join_command(self) -> Optional[dict[str, Any]]:
        # the table's ring holds the latest revision so `last_command_id` reports it (at join
        # `_Member` only reconciles the entries, it applies no command)
        if not self._last_rev:
            return None
        return {"id": self._last_rev, "kind": HALT, "scope": "(joined)", "reason": "joined"}

    def _publish_and_apply(self, cmd: Optional[dict[str, Any]]) -> None:
        entries = sorted(self._latched.values(), key=lambda x: x["command_id"])
        try:
            self._writer.publish(entries, cmd)
        except ValueError as err:  # e.g. more latched scopes than the table holds
            log.critical("control plane: private table refused the latched set (%s)", err)
            from ..killswitch import Scope

            firm = {"state": int(TradingState.HALTED), "scope_id": Scope().scope_id}
            self._writer.publish([firm], None)
        t_pub = time.time_ns()
        _, _, states = self._member.on_event("changed", self._table.snapshot())
        if cmd is not None and cmd["kind"] in (HALT, REDUCE) and self.attached:
            # the gate reads the private table: it closed when the table was published
            self._member.gate_closed_ns = t_pub
        self._states = states

    # ------------------------------------------------------------------ presence

    async def _beat(self) -> None:
        if self._presence is None or self._closed:
            return
        m = self._member
        body = {
            "static": self.static,
            "states": json.loads(self._states or "{}"),
            "last_command_id": m.last_cmd,
            "gate_closed_ns": m.gate_closed_ns,
            "heartbeat_ns": time.time_ns(),
            "control": self.url.redacted,
            "lost": m.lost,
        }
        try:
            await self._presence.put(self.key, json.dumps(body, sort_keys=True).encode())
        except Exception as e:
            log.debug("control plane: heartbeat failed: %r", e)
            if "NoStream" in type(e).__name__:  # a restarted server lost the memory bucket
                await self._ensure_presence()

    async def _ensure_presence(self) -> None:
        try:
            js = self._nc.jetstream(timeout=_nats.API_TIMEOUT_S)
            self._presence = await _nats.presence_bucket(js, self.url, _PRESENCE_TTL_S, True)
        except Exception as e:
            log.warning("control plane: presence bucket unavailable: %r", e)

    async def _heartbeats(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.heartbeat_s)
            if self._member.lost:
                continue
            with self._member.lock:
                self._states = self._member._states_json()
            await self._beat()
            await self._anchor_if_changed()

    async def _anchor_if_changed(self) -> None:
        """Anchors the process's log off-host (anchor.py) when a segment was sealed or its
        kill-switch state changed since the last time (a cheap listing decides)."""
        log_dir = self.static["log_dir"]
        if not log_dir or self._anchor is False:
            return
        try:
            mark = (tuple(sorted(os.listdir(log_dir))), self._states)
        except OSError:
            return
        if mark == self._anchor_mark:
            return
        try:
            if self._anchor is None:
                from .anchor import Anchor

                self._anchor = Anchor(self.url, log_dir)
            js = self._nc.jetstream(timeout=_nats.API_TIMEOUT_S)
            await self._anchor.publish_async(js)
            self._anchor_mark = mark
        except Exception as e:  # e.g. this user may not publish anchors: say so once
            if self._anchor_mark != ("failed",):
                log.warning("control plane: anchoring %s off-host failed: %r", log_dir, e)
            self._anchor_mark = ("failed",)

    # ------------------------------------------------------------------ connection events

    async def _on_error(self, e: Exception) -> None:
        log.warning("control plane %s: %r", self.url.redacted, e)

    async def _on_disconnect(self) -> None:
        if self._closed or self._loss_timer is not None:
            return
        loop = asyncio.get_running_loop()
        self._loss_timer = loop.call_later(self.loss_after_s, self._lost)

    def _lost(self) -> None:
        self._loss_timer = None
        if not self._closed and not self._member.lost:
            why = f"no connection to {self.url.redacted} for {self.loss_after_s:g} s"
            self._member.on_event("lost", why)

    async def _on_reconnect(self) -> None:
        if self._loss_timer is not None:
            self._loss_timer.cancel()
            self._loss_timer = None
        if self._closed:
            return
        if self._member.lost:
            self._member.on_event("restored", self._table.snapshot())
        await self._ensure_presence()  # a restarted single server lost the memory bucket
        try:  # the consumer may have lived on a node that is gone: watch again
            await self._watch(initial=False)
        except Exception as e:
            log.error("control plane: re-watching after reconnect failed: %r", e)
        await self._beat()

    async def _shutdown(self) -> None:
        try:
            if self._presence is not None:
                await self._presence.delete(self.key)
        except Exception:
            pass
        if self._nc is not None:
            try:
                await self._nc.close()
            except Exception:
                pass


def join_nats(ks: Any, cfg: Any, location: str, name: Optional[str]) -> NatsMembership:
    try:
        url = _nats.parse_url(location)
    except ValueError as e:
        raise ControlError(str(e)) from None
    _nats.import_nats()
    m = NatsMembership(ks, url, cfg, name)
    m.start()  # every latched scope applied to `ks` itself (latched in its log) before this
    # From here on the gate consults the private table on every `allows()`: a command closes
    # it the moment the member thread publishes it there, before the audit is written.
    core = getattr(ks, "_core", None)
    if core is not None:
        core.attach_control(m.table)
        m.attached = True
    _MEMBERS.add(m)  # type: ignore[arg-type]
    log.info("joined control plane %s (presence %s)", url.redacted, m.key)
    return m
