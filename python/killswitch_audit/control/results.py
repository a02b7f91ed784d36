"""What the control planes answer, shared by both (host-local and NATS): a command's
`CommandResult` with each process's `ProcessAck`, `Status` with each joined process's
`ProcessStatus` (read from its presence document), and `ack_of`, the one rule for what a
process's presence says about a command it reports applied.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from ._layout import RESET


@dataclass(frozen=True)
class ProcessAck:
    """One joined process's answer to a command."""

    host: str
    pid: int
    name: str
    presence: str
    #: ns from the command being written to this process's gate closing (None: not a
    #: restriction, or the process reported no time)
    latency_ns: Optional[int]


@dataclass(frozen=True)
class CommandResult:
    """What `halt`/`reset` did: the command id, which live processes applied it (with the
    per-process latency), which did not within the wait (`missing`), and, for a reset, which
    acknowledged it but still restrict the scope (`still_restricted`: the process refused
    the reset, e.g. its log could not chain it in time, and says why in its own log; its halt
    stays). `ok` only when every live process applied it."""

    command_id: int
    kind: str
    scope: str
    journal_seq: int
    written_ns: int
    applied_by: list[ProcessAck] = field(default_factory=list)
    missing: list[ProcessAck] = field(default_factory=list)
    wait_s: float = 0.0
    still_restricted: list[ProcessAck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.still_restricted

    def latencies_ns(self) -> list[int]:
        return sorted(a.latency_ns for a in self.applied_by if a.latency_ns is not None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


#: `halt` returns one of these
HaltResult = CommandResult


@dataclass(frozen=True)
class ProcessStatus:
    host: str
    pid: int
    uid: int
    name: str
    log_dir: str
    states: dict[str, str]
    last_command_id: int
    gate_closed_ns: int
    heartbeat_ns: int
    control: str
    stale: bool
    presence: str

    @classmethod
    def from_presence(cls, d: dict[str, Any], *, stale: bool, presence: str) -> ProcessStatus:
        """From a presence document (the file of the host-local plane, the KV entry of the NATS
        one). Raises ValueError/TypeError/AttributeError when it is not one."""
        st = d.get("static", {})
        return cls(
            host=str(st.get("host", "")),
            pid=int(st.get("pid", 0)),
            uid=int(st.get("uid", -1)),
            name=str(st.get("name", "")),
            log_dir=str(st.get("log_dir", "")),
            states=dict(d.get("states", {})),
            last_command_id=int(d.get("last_command_id", 0)),
            gate_closed_ns=int(d.get("gate_closed_ns", 0)),
            heartbeat_ns=int(d.get("heartbeat_ns", 0)),
            control=str(d.get("control", "")),
            stale=stale,
            presence=presence,
        )


@dataclass(frozen=True)
class Status:
    directory: str
    epoch: int
    last_command_id: int
    updated_ns: int
    latched: list[dict[str, Any]]
    commands: list[dict[str, Any]]
    processes: list[ProcessStatus]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ack_of(p: ProcessStatus, kind: int, scope: str, written_ns: int) -> tuple[ProcessAck, bool]:
    """The answer of `p`, which reports having applied a command (`last_command_id` at or past
    it), and whether it still restricts `scope` after a RESET (it refused the reset)."""
    lat = None
    if kind != RESET and p.gate_closed_ns >= written_ns:
        lat = p.gate_closed_ns - written_ns
    refused = kind == RESET and scope in p.states
    return ProcessAck(p.host, p.pid, p.name, p.presence, lat), refused


def read_presence(path: Path) -> Optional[ProcessStatus]:
    """A presence file, with `stale` True when no live process holds its lock. None when it
    vanished or never held a complete JSON object."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = None
        for _ in range(20):  # a read racing a rewrite may be torn: two equal reads win
            a = os.pread(fd, 4096, 0)
            b = os.pread(fd, 4096, 0)
            if a == b:
                data = a
                break
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            stale = True  # nobody holds it: its process is gone
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            stale = False
    finally:
        os.close(fd)
    if not data or not data.strip():
        return None
    try:
        return ProcessStatus.from_presence(json.loads(data), stale=stale, presence=str(path))
    except (ValueError, TypeError, AttributeError):
        return None
