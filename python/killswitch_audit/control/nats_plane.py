"""The operator's side of the NATS JetStream control plane: `ControlPlane("nats://...")` returns
a `NatsControlPlane` (same interface: `halt`, `reset`, `status`, `events`; docs/CONTROL.md).

A command is, in order:

1. checked like a host-local one (`plane.check_command`: scope, names, reason, second operator);
2. the live members are read from the `ksa_presence` bucket (a watch opened *before* the
   command, so no ack is missed);
3. published to the latch bucket `ksa_latched` under the scope's key, with `Nats-Msg-Id` = the
   command's uuid (`idempotency_key`): JetStream stores it once however often it is sent, and
   its stream sequence (the entry's revision) is the command id every member orders by. The
   publish returns once JetStream has stored it (on a quorum of an R3 bucket's replicas);
4. copied to the `ksa_commands` stream (history for `events()`, same uuid);
5. acknowledged: each live member's presence is watched until it reports the command id, for
   at most `ack_timeout_s`.

Who may publish is the server's business: only users whose NATS permissions allow publishing
to `$KV.ksa_latched.>` can halt or reset (docs/CONTROL.md). A refused publish raises
`ControlRefused` and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid as uuidlib
from typing import Any, Optional, Union

from ..format import TradingState
from . import _nats
from ._layout import HALT, KIND_NAMES, REDUCE, RESET, ControlError, ControlRefused, hostname
from .plane import check_command
from .results import CommandResult, ProcessAck, ProcessStatus, Status, ack_of

_STATE_OF = {HALT: int(TradingState.HALTED), REDUCE: int(TradingState.REDUCING), RESET: 0}
_PRESENCE_TTL_S = 30.0
#: how long a command keeps trying while a cluster elects leaders (s)
_RETRY_S = 10.0


def _stale(heartbeat_ns: int, period_s: float) -> bool:
    """Three heartbeats missed: the process is gone or cut off (the bucket's TTL removes its
    entry later)."""
    return (time.time_ns() - heartbeat_ns) / 1e9 > 3 * period_s + 1.0


#: heartbeat period per presence key, as the member announced it
_period: dict[str, float] = {}


def _process_status(key: str, raw: bytes) -> Optional[ProcessStatus]:
    try:
        d = json.loads(raw)
        st = d.get("static", {})
        hb = int(d.get("heartbeat_ns", 0))
        period = float(st.get("heartbeat_s", 1.0))
        if len(_period) > 10_000:
            _period.clear()
        _period[key] = period
        return ProcessStatus.from_presence(d, stale=_stale(hb, period), presence=key)
    except (ValueError, TypeError, AttributeError):
        return None


class NatsControlPlane:
    """The NATS JetStream control plane at `location` (`nats://[user:pw@]h:p[,h:p][?replicas=3]`).
    `create=True` creates the buckets and the commands stream when missing."""

    def __init__(self, location: Any = None, config: Any = None, *, create: bool = True):
        if config is None:
            from ..config import load_config

            config = load_config()
        self.config = config
        try:
            self.url = _nats.parse_url(str(location))
        except ValueError as e:
            raise ControlError(str(e)) from None
        _nats.import_nats()
        ctl = config.control
        self.require_second_operator = bool(ctl.require_second_operator)
        self.ack_timeout_s = float(ctl.ack_timeout_s)
        self.create = create

    @property
    def directory(self) -> str:
        """The URL without its password (the name `status` prints)."""
        return self.url.redacted

    # ------------------------------------------------------------------ plumbing

    def _run(self, fn: Any, *args: Any, timeout: float) -> Any:
        """Runs `fn(nc, js, errors, *args)` on a fresh connection in a private loop thread."""
        loop = _nats.LoopThread("ksa-nats-plane")

        async def main() -> Any:
            errors: list[Exception] = []

            async def on_error(e: Exception) -> None:
                errors.append(e)

            nc = await _nats.connect(
                self.url,
                name=f"killswitch-audit operator pid {os.getpid()}",
                on_error=on_error,
                forever=False,
            )
            try:
                return await fn(nc, nc.jetstream(timeout=_nats.API_TIMEOUT_S), errors, *args)
            finally:
                await nc.close()

        try:
            return loop.run(main(), timeout)
        except TimeoutError as e:
            raise ControlError(
                f"control plane {self.url.redacted}: no answer within {timeout:g} s ({e!r})"
            ) from e
        finally:
            loop.stop()

    @staticmethod
    def _refused(errors: list[Exception], what: str) -> Optional[ControlRefused]:
        for e in errors:
            if "permissions violation" in str(e).lower() or "authorization" in str(e).lower():
                return ControlRefused(
                    f"the NATS server refused to let this user {what} ({e}); only operators "
                    "may publish to $KV.ksa_latched.> (docs/CONTROL.md); nothing changed"
                )
        return None

    # ------------------------------------------------------------------ commands

    def halt(
        self,
        scope: Union[str, Any] = "firm",
        reduce_only: bool = False,
        *,
        operator: str,
        reason: str,
        wait_s: Optional[float] = None,
        idempotency_key: Optional[str] = None,
    ) -> CommandResult:
        """Halts `scope` (or puts it in reduce-only) on every joined process. The same
        `idempotency_key` sent again (within JetStream's 2-minute duplicate window) returns the
        first command's id and is applied once."""
        kind = REDUCE if reduce_only else HALT
        return self._command(kind, scope, operator, reason, None, wait_s, idempotency_key)

    def reset(
        self,
        scope: Union[str, Any] = "firm",
        *,
        operator: str,
        reason: str,
        second_operator: Optional[str] = None,
        wait_s: Optional[float] = None,
        idempotency_key: Optional[str] = None,
    ) -> CommandResult:
        """Lifts `scope`'s latch on every joined process (each applies its own reset rules)."""
        return self._command(
            RESET, scope, operator, reason, second_operator, wait_s, idempotency_key
        )

    def _command(
        self,
        kind: int,
        scope_arg: Any,
        operator: Any,
        reason: Any,
        second: Any,
        wait_s: Optional[float],
        key: Optional[str],
    ) -> CommandResult:
        scope, op, why, second_op, refusal = check_command(
            kind, scope_arg, operator, reason, second, self.require_second_operator
        )
        if refusal is not None:
            raise ControlRefused(refusal)
        if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 128):
            raise ValueError(f"idempotency_key must be a str of 1..128 characters, got {key!r}")
        wait = self.ack_timeout_s if wait_s is None else max(0.0, float(wait_s))
        cmd_uuid = key or uuidlib.uuid4().hex
        value = {
            "v": 1,
            "command": cmd_uuid,
            "kind": KIND_NAMES[kind],
            "state": _STATE_OF[kind],
            "scope": scope.text,
            "account": scope.account,
            "strategy": scope.strategy,
            "symbol_id": scope.symbol_id,
            "venue": scope.venue,
            "scope_id": scope.scope_id,
            "operator": op,
            "second_operator": second_op,
            "reason": why,
            "host": hostname(),
            "uid": os.getuid(),
            "pid": os.getpid(),
        }
        return self._run(self._publish, kind, value, wait, timeout=wait + 3 * _RETRY_S + 5)

    async def _publish(
        self,
        nc: Any,
        js: Any,
        errors: list[Exception],
        kind: int,
        value: dict[str, Any],
        wait: float,
    ) -> CommandResult:
        import nats.errors

        end = time.monotonic() + _RETRY_S

        def refused() -> Optional[Exception]:
            return self._refused(errors, KIND_NAMES[kind])

        try:
            kv = await _nats.retry(
                lambda: _nats.latch_bucket(js, self.url, self.create), end, refused
            )
            presence = await _nats.retry(
                lambda: _nats.presence_bucket(js, self.url, _PRESENCE_TTL_S, self.create),
                end,
                refused,
            )
            if self.create:
                from .anchor import ensure_stream

                await _nats.retry(lambda: _nats.commands_stream(js, self.url), end, refused)
                await _nats.retry(lambda: ensure_stream(js, self.url), end, refused)
        except nats.errors.TimeoutError as e:
            raise self._refused(errors, "create the control buckets") or ControlError(
                f"control plane {self.url.redacted}: JetStream did not answer ({e!r})"
            ) from e
        except Exception as e:
            if "BucketNotFound" in type(e).__name__:
                raise ControlError(
                    f"control plane {self.url.redacted}: no bucket {_nats.LATCH_BUCKET} "
                    "(create=False)"
                ) from e
            raise
        # the members alive now (watch first: an ack that comes fast is not missed)
        watcher = await _nats.retry(presence.watchall, end, refused)
        pending: dict[str, ProcessStatus] = {}
        while True:
            e = await watcher.updates(timeout=_nats.API_TIMEOUT_S)
            if e is None:
                break
            if e.operation is None and e.value:
                p = _process_status(e.key, e.value)
                if p is not None and not p.stale:
                    pending[e.key] = p
                else:
                    pending.pop(e.key, None)
            else:
                pending.pop(e.key, None)
        if kind != RESET:  # a halt after a reduce-only keeps the halt
            try:
                old = json.loads((await kv.get(str(value["scope_id"]))).value or b"{}")
                value["state"] = max(value["state"], int(old.get("state", 0)))
            except Exception:
                pass
        value["written_ns"] = written = time.time_ns()
        body = json.dumps(value, sort_keys=True).encode()
        hdr = {"Nats-Msg-Id": value["command"]}
        subject = f"$KV.{_nats.LATCH_BUCKET}.{value['scope_id']}"

        async def publish() -> Any:
            return await js.publish(subject, body, headers=dict(hdr))

        try:
            # a timeout may hide a stored command: sending it again with the same
            # Nats-Msg-Id cannot store it twice
            ack = await _nats.retry(publish, time.monotonic() + _RETRY_S, refused)
        except nats.errors.TimeoutError as e:
            await asyncio.sleep(0.05)  # the server's -ERR may trail the timeout
            raise self._refused(errors, KIND_NAMES[kind]) or ControlError(
                f"control plane {self.url.redacted}: the command was not stored ({e!r}); "
                "it may or may not apply: run status"
            ) from e
        cmd_id = int(ack.seq)
        if ack.duplicate:  # already stored: report the first one's time
            try:
                first = json.loads((await kv.get(str(value["scope_id"]), revision=cmd_id)).value)
                written = int(first.get("written_ns", written))
            except Exception:
                pass
        try:
            await js.publish(
                _nats.COMMANDS_SUBJECT,
                json.dumps({**value, "command_id": cmd_id}, sort_keys=True).encode(),
                headers=hdr,
            )
        except Exception:
            pass  # history only: the latch entry is the command
        done: list[ProcessAck] = []
        refusing: list[ProcessAck] = []

        def check(key: str, p: Optional[ProcessStatus]) -> None:
            if p is None or key not in pending:
                return
            if p.last_command_id >= cmd_id:
                ack, refused = ack_of(p, kind, value["scope"], written)
                (refusing if refused else done).append(ack)
                pending.pop(key)

        deadline = time.monotonic() + wait
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                e = await watcher.updates(timeout=min(left, 0.5))
            except nats.errors.TimeoutError:
                e = None
            for k, p in list(pending.items()):  # died meanwhile: heartbeats stopped
                if _stale(p.heartbeat_ns, _period.get(k, 1.0)):
                    pending.pop(k)
            if e is None:
                continue
            if e.operation is not None or not e.value:
                pending.pop(e.key, None)  # left the plane
                continue
            check(e.key, _process_status(e.key, e.value))
        try:
            await watcher.stop()
        except Exception:
            pass
        missing = [ProcessAck(p.host, p.pid, p.name, k, None) for k, p in pending.items()]
        return CommandResult(
            cmd_id, KIND_NAMES[kind], value["scope"], 0, written, done, missing, wait, refusing
        )

    # ------------------------------------------------------------------ reading

    def status(self) -> Status:
        """Every member's presence (live and stale) and the latched scopes."""
        return self._run(self._status, timeout=3 * _RETRY_S + 5)

    async def _status(self, nc: Any, js: Any, errors: list[Exception]) -> Status:
        end = time.monotonic() + _RETRY_S
        kv = await _nats.retry(lambda: _nats.latch_bucket(js, self.url, self.create), end)
        presence = await _nats.retry(
            lambda: _nats.presence_bucket(js, self.url, _PRESENCE_TTL_S, self.create), end
        )
        latched: list[dict[str, Any]] = []
        for e in await _entries(kv):
            try:
                v = json.loads(e.value)
            except ValueError:
                v = {"state": int(TradingState.HALTED), "scope": f"(unreadable key {e.key})"}
            if int(v.get("state", 0)) > 0:
                latched.append(
                    {
                        **{k: v.get(k) for k in ("account", "strategy", "symbol_id", "venue")},
                        "scope_id": v.get("scope_id"),
                        "state": int(v["state"]),
                        "scope": v.get("scope", ""),
                        "state_name": TradingState(int(v["state"])).name,
                        "command_id": int(e.revision),
                        "operator": v.get("operator", ""),
                        "reason": v.get("reason", ""),
                        "host": v.get("host", ""),
                        "written_ns": v.get("written_ns", 0),
                    }
                )
        procs = []
        for e in await _entries(presence):
            p = _process_status(e.key, e.value)
            if p is not None:
                procs.append(p)
        info = await js.stream_info(f"KV_{_nats.LATCH_BUCKET}")
        return Status(
            self.url.redacted,
            0,
            int(info.state.last_seq or 0),
            time.time_ns(),
            sorted(latched, key=lambda x: x["command_id"]),
            [],
            sorted(procs, key=lambda p: (p.host, p.pid)),
        )

    def events(self, since: int = -1) -> list[dict[str, Any]]:
        """The commands of the `ksa_commands` stream with stream seq > `since`, oldest first."""
        return self._run(self._events, since, timeout=30.0)

    async def _events(self, nc: Any, js: Any, errors: list[Exception], since: int) -> list[Any]:
        from nats.js.errors import NotFoundError

        try:
            info = await js.stream_info(_nats.COMMANDS_STREAM)
        except NotFoundError:
            return []
        out = []
        first = max(int(info.state.first_seq or 1), since + 1)
        for seq in range(first, int(info.state.last_seq or 0) + 1):
            try:
                m = await js.get_msg(_nats.COMMANDS_STREAM, seq)
                ev = json.loads(m.data)
            except Exception:
                continue
            ev["seq"] = seq
            out.append(ev)
        return out


async def _entries(kv: Any) -> list[Any]:
    """The last entry of every key of a bucket (deleted ones left out)."""
    w = await _nats.retry(kv.watchall, time.monotonic() + _RETRY_S)
    out = []
    try:
        while True:
            e = await w.updates(timeout=_nats.API_TIMEOUT_S)
            if e is None:
                break
            if e.operation is None and e.value:
                out.append(e)
    finally:
        await w.stop()
    return out
