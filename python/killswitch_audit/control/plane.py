"""The operator's side of the host-local control plane: `ControlPlane(location)`.

A command (`halt`, `reset`) is, in order:

1. checked (scope text, operator names, reason; a reset's second operator when
   `control.require_second_operator`);
2. journaled: the journal (`<control>/journal`, an audit log with the usual hash chain, so
   `killswitch-audit verify` checks it) is opened by this call, which takes its directory lock
   and so serialises concurrent operators; the command's records (KILL_SWITCH + STATE_CHANGE
   for a halt, RESET + STATE_CHANGE for a reset, then TEXT `control:{json}` with command id,
   operator(s), scope, reason, origin host and uid) are handed to it;
3. published: the state file's seqlock table gets the new latched scopes and the command (the
   gates that map the table see it at once; the watchers wake on inotify);
4. made durable (the journal is flushed with fdatasync and closed);
5. acknowledged: every live presence file is polled until it reports the command id applied,
   for at most `ack_timeout_s`; the result lists who applied it, how fast, and who is missing.

A reset that cannot be journaled is refused before anything is published. A user who may not
write the journal or the state file gets `ControlRefused` and nothing changes.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, Union

from ..format import KillSwitchReason, RecordKind, TradingState, decode_text_chunk
from ._layout import (
    HALT,
    KIND_NAMES,
    REDUCE,
    RESET,
    TEXT_PREFIX,
    ControlError,
    ControlRefused,
    Layout,
    check_name,
    check_reason,
    hostname,
    resolve,
)
from .results import (
    CommandResult,
    ProcessAck,
    ProcessStatus,
    Status,
    ack_of,
    read_presence,
)

_JOURNAL_OPTS = dict(
    buffer_size=1024,
    emergency_buffer_size=64,
    segment_size_mb=1,
    flush_interval_ms=1.0,
    durable_kill_switch=True,
)
_LOCK_WAIT_S = 10.0


def _mkdir(path: Path, mode: int, gid: Optional[int]) -> None:
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if path.is_symlink() or not path.is_dir():
            raise ControlError(f"{path}: exists and is not a directory") from None
        return
    if gid is not None:
        os.chown(path, -1, gid)
    os.chmod(path, mode)  # exactly, whatever the umask


def init_directory(root: Path, group: Optional[str] = None) -> Layout:
    """Creates the control directory (idempotent): see `_layout`. With `group`, the directory,
    journal and state file belong to that group (the operators) and are group-writable."""
    gid = grp.getgrnam(group).gr_gid if group else None
    g = 0o020 if group else 0
    lay = Layout(Path(root))
    _mkdir(lay.root, 0o755 | g | (0o2000 if group else 0), gid)
    st = os.lstat(lay.root)
    if st.st_mode & 0o002:
        raise ControlError(f"{lay.root}: world-writable control directory refused")
    _mkdir(lay.journal, 0o700 | (0o070 if group else 0) | (0o2000 if group else 0), gid)
    _mkdir(lay.procs, 0o1777, None)
    if not lay.state.exists():
        from .. import _native

        try:
            _native.ControlTable.create(str(lay.state), 0o644 | g)
        except FileExistsError:
            pass
        else:
            if gid is not None:
                os.chown(lay.state, -1, gid)
    return lay


def check_command(
    kind: int, scope_arg: Any, operator: Any, reason: Any, second: Any, require_second: bool
) -> tuple[Any, str, str, str, Optional[str]]:
    """A command's arguments, checked (both planes): `(scope, operator, reason,
    second_operator, refusal)`; `refusal` names why a reset lacks its second operator."""
    from ..killswitch import Scope

    scope = scope_arg if isinstance(scope_arg, Scope) else Scope.parse(str(scope_arg))
    for what, v, most in (
        ("account", scope.account, 32),
        ("strategy", scope.strategy, 40),
        ("venue", scope.venue, 24),
        ("scope text", scope.text, 255),
    ):
        if v is not None and (len(v.encode()) > most or "\x00" in v):
            raise ValueError(
                f"scope {what} {v!r} does not fit the control table (at most {most} bytes)"
            )
    op = check_name("operator", operator)
    why = check_reason(reason)
    second_op = check_name("second_operator", second, required=False)
    refusal = None
    if kind == RESET and require_second:
        if not second_op:
            refusal = "control.require_second_operator: a reset needs --second-operator"
        elif second_op.casefold() == op.casefold():
            refusal = f"the second operator must differ from the first ({op!r} twice)"
    return scope, op, why, second_op, refusal


class ControlPlane:
    """The host-local control plane at `location` (None: `$KILLSWITCH_AUDIT_CONTROL`, the
    config's `control.directory`, else the per-user default). `config`: an `AuditConfig`
    (None: the loaded one) for `control.*`. `create=True` creates the directory if missing."""

    def __new__(cls, location: Any = None, config: Any = None, *, create: bool = True) -> Any:
        # a nats:// location (given, or named by the env/config) is the firm-wide plane
        if cls is ControlPlane:
            from ._layout import is_nats, named_location

            if config is None and location is None:
                from ..config import load_config

                config = load_config()
            loc = location if location is not None else named_location(config)
            if is_nats(loc):
                from .nats_plane import NatsControlPlane

                return NatsControlPlane(loc, config, create=create)
        return super().__new__(cls)

    def __init__(self, location: Any = None, config: Any = None, *, create: bool = True):
        if config is None:
            from ..config import load_config

            config = load_config()
        self.config = config
        self.layout = Layout(resolve(location, config))
        ctl = config.control
        self.require_second_operator = bool(ctl.require_second_operator)
        self.ack_timeout_s = float(ctl.ack_timeout_s)
        if create and not self.layout.state.exists():
            init_directory(self.layout.root, ctl.group)

    @property
    def directory(self) -> str:
        return str(self.layout.root)

    # ------------------------------------------------------------------ commands

    def halt(
        self,
        scope: Union[str, Any] = "firm",
        reduce_only: bool = False,
        *,
        operator: str,
        reason: str,
        wait_s: Optional[float] = None,
    ) -> CommandResult:
        """Halts `scope` (or puts it in reduce-only) on every joined process."""
        return self._command(
            HALT if not reduce_only else REDUCE, scope, operator, reason, None, wait_s
        )

    def reset(
        self,
        scope: Union[str, Any] = "firm",
        *,
        operator: str,
        reason: str,
        second_operator: Optional[str] = None,
        wait_s: Optional[float] = None,
    ) -> CommandResult:
        """Lifts `scope`'s latch on every joined process (each applies its own reset rules)."""
        return self._command(RESET, scope, operator, reason, second_operator, wait_s)

    def _command(
        self,
        kind: int,
        scope_arg: Any,
        operator: Any,
        reason: Any,
        second: Any,
        wait_s: Optional[float],
    ) -> CommandResult:
        scope, op, why, second_op, refusal = check_command(
            kind, scope_arg, operator, reason, second, self.require_second_operator
        )
        self._check_writer(kind)
        with self._command_lock():
            table = self._open_table()
            snap = table.snapshot()
            cmd_id = int(snap["last_command_id"]) + 1
            payload = {
                "command_id": cmd_id,
                "kind": KIND_NAMES[kind],
                "scope": scope.text,
                "operator": op,
                "second_operator": second_op,
                "reason": why,
                "host": hostname(),
                "uid": os.getuid(),
                "pid": os.getpid(),
            }
            sid = scope.scope_id
            entries = [e for e in snap["entries"] if e["scope_id"] != sid]
            old = next((e["state"] for e in snap["entries"] if e["scope_id"] == sid), 0)
            if kind == RESET:
                seq, written = self._reset(table, entries, old, sid, payload, refusal)
            else:
                seq, written = self._restrict(table, entries, old, sid, scope, kind, payload)
        result = CommandResult(cmd_id, KIND_NAMES[kind], scope.text, seq, written)
        return self._wait_acks(result, kind, self.ack_timeout_s if wait_s is None else wait_s)

    def _command_record(self, payload: dict[str, Any], kind: int, seq: int) -> dict[str, Any]:
        return {
            "id": payload["command_id"],
            "kind": kind,
            "written_ns": time.time_ns(),
            "seq": max(seq, 0),
            "scope": payload["scope"],
            "operator": payload["operator"],
            "second_operator": payload["second_operator"],
            "host": payload["host"],
            "reason": payload["reason"],
        }

    def _publish(self, table: Any, entries: list[dict[str, Any]], command: dict) -> None:
        try:
            table.publish(entries, command)
        except ValueError as e:
            raise ControlError(f"{self.layout.state}: {e}") from e

    def _restrict(
        self, table: Any, entries: list, old: int, sid: int, scope: Any, kind: int, payload: dict
    ) -> tuple[int, int]:
        """A halt (or reduce-only) is published first, then journaled: like `emergency_stop`,
        the gates close before anything is written (opening the journal costs milliseconds),
        and evidence that restricts trading needs no authentication to be obeyed. If the
        journal then fails, the halt stands and the error says it is not journaled."""
        target = int(TradingState.HALTED if kind == HALT else TradingState.REDUCING)
        new = max(old, target)
        entries.append(
            {
                "state": new,
                "account": scope.account,
                "strategy": scope.strategy,
                "symbol_id": scope.symbol_id,
                "venue": scope.venue,
                "scope_id": sid,
                "command_id": payload["command_id"],
                "seq": 0,
            }
        )
        command = self._command_record(payload, kind, 0)
        self._publish(table, entries, command)  # every gate on the host is closed from here
        try:
            journal = self._open_journal(kind)
        except ControlError as e:
            raise ControlError(
                f"{KIND_NAMES[kind]} {payload['scope']} is IN FORCE on every joined process "
                f"(command {payload['command_id']}) but could not be journaled: {e}"
            ) from e
        try:
            seq = journal.audit(
                int(RecordKind.KILL_SWITCH), int(KillSwitchReason.MANUAL), 0, 0, 0, sid, True
            )
            journal.audit(
                int(RecordKind.STATE_CHANGE), new, 0, old, int(KillSwitchReason.MANUAL), sid, True
            )
            self._journal_text(
                journal,
                seq,
                {
                    **payload,
                    "old_state": old,
                    "new_state": new,
                    "published_ns": command["written_ns"],
                },
            )
            journal.flush(2.0, durable=True)
        finally:
            journal.close()
        return seq, command["written_ns"]

    def _reset(
        self, table: Any, entries: list, old: int, sid: int, payload: dict, refusal: Optional[str]
    ) -> tuple[int, int]:
        """A reset is journaled and made durable first, and published only then: evidence that
        lifts a restriction must exist before the restriction is lifted."""
        journal = self._open_journal(RESET)
        try:
            if refusal is not None:
                rseq = journal.audit(int(RecordKind.RESET), 1, 0, old, old, sid, True)
                self._journal_text(journal, rseq, {**payload, "refused": refusal})
                journal.flush(2.0, durable=True)
                raise ControlRefused(refusal)
            seq = journal.audit(int(RecordKind.RESET), 0, 0, old, 0, sid, True)
            journal.audit(
                int(RecordKind.STATE_CHANGE), 0, 0, old, int(KillSwitchReason.MANUAL), sid, True
            )
            if seq < 0:
                raise ControlRefused("the reset could not be journaled: nothing changed")
            self._journal_text(journal, seq, {**payload, "old_state": old, "new_state": 0})
            if not journal.flush(2.0, durable=True):
                raise ControlRefused("the reset could not be made durable: nothing changed")
            command = self._command_record(payload, RESET, seq)
            self._publish(table, entries, command)
        finally:
            journal.close()
        return seq, command["written_ns"]

    def _check_writer(self, kind: int) -> None:
        if not os.access(self.layout.journal, os.W_OK | os.X_OK) or not os.access(
            self.layout.state, os.W_OK
        ):
            raise ControlRefused(
                f"user uid {os.getuid()} may not {KIND_NAMES[kind]} through the control plane "
                f"{self.layout.root}: the journal and the state file are writable by the "
                "operators only (docs/CONTROL.md); nothing changed"
            )

    @contextlib.contextmanager
    def _command_lock(self) -> Iterator[None]:
        """Serialises command issuers (command ids come from the table's last one). A file in
        the journal directory, which only operators may write; released by the kernel if the
        issuer dies."""
        path = self.layout.journal / "command.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o660)
        except PermissionError as e:
            raise ControlRefused(f"control journal: {e}; nothing changed") from e
        try:
            deadline = time.monotonic() + _LOCK_WAIT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ControlError(
                            f"{path}: another operator's command held the lock for "
                            f"{_LOCK_WAIT_S:g} s"
                        ) from None
                    time.sleep(0.002)
            yield
        finally:
            os.close(fd)

    def _open_journal(self, kind: int) -> Any:
        from .. import _native
        from ..errors import KillSwitchAuditError

        deadline = time.monotonic() + _LOCK_WAIT_S
        while True:
            try:
                return _native.AuditLogger(str(self.layout.journal), **_JOURNAL_OPTS)
            except KillSwitchAuditError as e:
                if "holds this directory" not in str(e) or time.monotonic() > deadline:
                    raise ControlError(f"control journal {self.layout.journal}: {e}") from e
                time.sleep(0.005)  # another operator's command is being written
            except PermissionError as e:
                raise ControlRefused(f"control journal: {e}; nothing changed") from e
            except OSError as e:  # a full disk, an I/O error: named, never a bare OSError
                raise ControlError(f"control journal {self.layout.journal}: {e}") from e

    def _open_table(self) -> Any:
        from .. import _native

        try:
            return _native.ControlTable(str(self.layout.state), writable=True)
        except PermissionError as e:
            raise ControlRefused(f"control state file: {e}; nothing changed") from e
        except (OSError, ValueError) as e:
            raise ControlError(f"control state file: {e}") from e

    @staticmethod
    def _journal_text(journal: Any, seq: int, payload: dict[str, Any]) -> None:
        from ..format import encode_text_chunks

        if seq < 0:
            return
        text = TEXT_PREFIX + json.dumps(payload, sort_keys=True)
        for idx, a, b, sym in encode_text_chunks(text):
            journal.audit(int(RecordKind.TEXT), idx, sym, a, b, seq, True)

    def _wait_acks(self, result: CommandResult, kind: int, wait_s: float) -> CommandResult:
        deadline = time.monotonic() + max(0.0, wait_s)
        pending = {p.presence: p for p in self._processes() if not p.stale}
        done: list[ProcessAck] = []
        refusing: list[ProcessAck] = []
        while True:
            for path in list(pending):
                p = read_presence(Path(path))
                if p is None or p.stale:
                    pending.pop(path)  # gone or died meanwhile: not live any more
                    continue
                if p.last_command_id >= result.command_id:
                    ack, refused = ack_of(p, kind, result.scope, result.written_ns)
                    (refusing if refused else done).append(ack)
                    pending.pop(path)
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(0.0005)
        missing = [ProcessAck(p.host, p.pid, p.name, p.presence, None) for p in pending.values()]
        return CommandResult(
            result.command_id,
            result.kind,
            result.scope,
            result.journal_seq,
            result.written_ns,
            done,
            missing,
            wait_s,
            refusing,
        )

    # ------------------------------------------------------------------ reading

    def _processes(self) -> list[ProcessStatus]:
        out = []
        try:
            names = sorted(os.listdir(self.layout.procs))
        except FileNotFoundError:
            return out
        for n in names:
            if n.endswith(".presence"):
                p = read_presence(self.layout.procs / n)
                if p is not None:
                    out.append(p)
        return out

    def status(self) -> Status:
        """Every presence file (live and stale) and the latched scopes."""
        from .. import _native
        from ..killswitch import Scope

        try:
            snap = _native.ControlTable(str(self.layout.state)).snapshot()
        except (OSError, ValueError) as e:
            raise ControlError(f"control state file: {e}") from e
        latched = []
        for e in snap["entries"]:
            sc = Scope(e["account"], e["strategy"], e["symbol_id"], e["venue"])
            latched.append({**e, "scope": sc.text, "state_name": TradingState(e["state"]).name})
        commands = [{**c, "kind_name": KIND_NAMES.get(c["kind"], "?")} for c in snap["commands"]]
        return Status(
            str(self.layout.root),
            snap["epoch"],
            snap["last_command_id"],
            snap["updated_ns"],
            latched,
            commands,
            self._processes(),
        )

    def events(self, since: int = -1) -> list[dict[str, Any]]:
        """The journal's commands with seq > `since`, oldest first, as dicts (the TEXT record's
        JSON merged with the main record's seq, time and kind)."""
        from ..reader import read_audit_log

        texts: dict[int, list[tuple[int, str]]] = {}
        mains: dict[int, Any] = {}
        try:
            records = list(read_audit_log(self.layout.journal))
        except FileNotFoundError:
            return []
        for r in records:
            if r.kind == RecordKind.TEXT:
                texts.setdefault(r.c, []).append((r.code, decode_text_chunk(r.a, r.b, r.symbol_id)))
            elif r.kind in (RecordKind.KILL_SWITCH, RecordKind.RESET):
                mains[r.seq] = r
        out = []
        for seq in sorted(mains):
            if seq <= since:
                continue
            r = mains[seq]
            text = "".join(t for _, t in sorted(texts.get(seq, [])))
            ev: dict[str, Any] = {}
            if text.startswith(TEXT_PREFIX):
                try:
                    ev = json.loads(text[len(TEXT_PREFIX) :])
                except ValueError:
                    ev = {"text": text}
            ev.update(seq=seq, wall_ns=r.wall_ns, record=RecordKind(r.kind).name)
            out.append(ev)
        return out
