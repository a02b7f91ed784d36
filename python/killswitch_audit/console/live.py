"""What the risk console's page shows, rebuilt from the control plane when it changes:
`LiveState` owns the change detection (a cheap fingerprint of the host-local table and
presence files, or a NATS plane's status), the timeline (journal commands, process state
changes, console events), the halt-to-gate latencies and the JSON document the page and the
event stream are served from. Console events are written to the console's audit log here.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from typing import Any, Optional

from ..control import ControlError, ControlPlane
from .resets import PendingResets

log = logging.getLogger("killswitch_audit.console")


class LiveState:
    """What the page shows, rebuilt from the control plane when it changes.

    Host-local plane: `poll()` is cheap (a seqlock snapshot of the shared table and a directory
    scan of the presence files) and runs every `poll_s`; the full rebuild (presence files,
    journal) runs only on a change or once a second (stale processes change nothing on disk).

    NATS plane (no files to watch): the fingerprint is `plane.status()` itself (latch bucket,
    presence bucket), read every `REMOTE_POLL_S` in a worker thread and reused by the rebuild;
    the timeline's commands come from the plane's `ksa_commands` stream (`plane.events`)."""

    #: how often a NATS plane's status is read (each read is a connection and two KV scans)
    REMOTE_POLL_S = 0.2

    def __init__(self, plane: ControlPlane, pending: PendingResets, journal: Any = None):
        self.plane = plane
        # the host-local plane has a layout of files; anything else is read through status()
        self.remote = not hasattr(plane, "layout")
        self._status: Any = None  # the remote status the last fingerprint read
        self._last_fp = 0.0
        self._woken = False  # the latch watch saw a change (nats_watch.py)
        self.journal = journal  # ConsoleJournal or None
        self.pending = pending
        self._table: Any = None
        self._fingerprint: Any = None
        self._last_rebuild = 0.0
        self._journal_seq = -1
        self._last_cmd = -1
        self.timeline: deque[dict[str, Any]] = deque(maxlen=300)
        self._tl_lock = threading.Lock()
        self._poll_lock = threading.Lock()  # note() runs on the loop, rebuilds in a thread
        self.latencies: dict[tuple[int, str], int] = {}
        self._proc_states: dict[str, tuple[Any, bool]] = {}
        self._expired: set[int] = set()
        self.version = 0
        self.doc: dict[str, Any] = {}
        self.error: Optional[str] = None
        self.journal_error: Optional[str] = None

    def note(self, kind: str, text: str, operator: str = "", **extra: Any) -> None:
        """A console event on the timeline and in the console's audit log (logins, refusals,
        four-eyes steps)."""
        ev = {"wall_ns": time.time_ns(), "source": "console", "kind": kind, "text": text,
              "operator": operator, **extra}  # fmt: skip
        if self.journal is not None and not self.journal.write(ev):
            self.journal_error = f"the console audit log {self.journal.directory} refused an event"
        with self._tl_lock:
            self.timeline.append(ev)
        log.info("%s: %s%s", kind, text, f" (operator {operator})" if operator else "")
        self._fingerprint = None  # push it

    def _fingerprint_now(self) -> Any:
        if self.remote:
            return self._remote_fingerprint()
        from .. import _native

        try:
            if self._table is None:
                self._table = _native.ControlTable(str(self.plane.layout.state))
            snap = self._table.snapshot()
            head = (snap["epoch"], snap["last_command_id"], snap["updated_ns"])
        except (OSError, ValueError) as e:
            self._table = None
            head = ("error", str(e))
        procs = []
        try:
            with os.scandir(self.plane.layout.procs) as it:
                for e in it:
                    st = e.stat(follow_symlinks=False)
                    procs.append((e.name, st.st_mtime_ns, st.st_size))
        except OSError:
            pass
        return (head, tuple(sorted(procs)), self.pending.version)

    def wake(self) -> None:
        """The NATS latch bucket changed: read the plane at the next poll tick."""
        self._woken = True

    def _remote_fingerprint(self) -> Any:
        """What changes when a NATS plane changes: the latch bucket's last revision, the latched
        scopes, each member's states, acked command and heartbeat. Blocking (network): only
        from `poll`, in a worker thread. An unreachable plane is a fingerprint of its own (the
        rebuild then shows the error)."""
        self._last_fp = time.monotonic()
        self._woken = False
        try:
            st = self.plane.status()
        except ControlError as e:
            self._status = e
            return (("error", str(e)), self.pending.version)
        self._status = st
        latched = tuple((e["scope"], e["state"], e["command_id"]) for e in st.latched)
        procs = tuple(
            (
                p.presence,
                tuple(sorted(p.states.items())),
                p.last_command_id,
                p.heartbeat_ns,
                p.stale,
            )
            for p in st.processes
        )
        return (st.last_command_id, latched, procs, self.pending.version)

    def due(self) -> bool:
        """Whether `poll` would rebuild: cheap enough for the event loop itself. For a NATS
        plane that cannot be known without the network: due every `REMOTE_POLL_S`, or at once
        when the latch watch saw a change."""
        if self.remote:
            return (
                self._fingerprint is None
                or self._woken
                or time.monotonic() - self._last_fp >= self.REMOTE_POLL_S
            )
        return (
            self._fingerprint is None
            or time.monotonic() - self._last_rebuild >= 1.0
            or self._fingerprint_now() != self._fingerprint
        )

    def poll(self) -> bool:
        """True when the state changed (then `doc` and `version` are new)."""
        with self._poll_lock:  # the poller and a command's kick() may both call it
            fp = self._fingerprint_now()
            now = time.monotonic()
            if fp == self._fingerprint and now - self._last_rebuild < 1.0:
                return False
            self._fingerprint = fp
            self._last_rebuild = now
            old = json.dumps(self.doc, sort_keys=True, default=str)
            self._rebuild()
            if json.dumps(self.doc, sort_keys=True, default=str) == old:
                return False
            self.version += 1
            self.doc["version"] = self.version
            return True

    def _rebuild(self) -> None:
        try:
            if self.remote:  # the status the fingerprint just read
                st, self._status = self._status, None
                if st is None:
                    st = self.plane.status()
                elif isinstance(st, ControlError):
                    raise st
            else:
                st = self.plane.status()
            self.error = None
        except ControlError as e:
            self.error = f"control plane unreadable: {e}"
            self.doc = {"error": self.error, "pending": self.pending.snapshot()}
            return
        if st.last_command_id != self._last_cmd:
            # A halt is published before it is journaled (ControlPlane): read the journal
            # again on every rebuild (at least once a second) until the newest command is in it.
            try:
                for ev in self.plane.events(self._journal_seq):
                    self._journal_seq = max(self._journal_seq, int(ev["seq"]))
                    if ev.get("command_id") == st.last_command_id:
                        self._last_cmd = st.last_command_id
                    if "wall_ns" not in ev:  # the NATS commands stream: the command's time
                        ev["wall_ns"] = int(ev.get("written_ns") or time.time_ns())
                    with self._tl_lock:
                        self.timeline.append({**ev, "source": "journal"})
            except Exception as e:  # the page says so; the next change retries
                self._last_cmd = st.last_command_id
                self.note("error", f"journal unreadable: {e}")
        for r in self.pending.snapshot():
            if r["state"] == "expired" and r["id"] not in self._expired:
                self._expired.add(r["id"])
                self.note(
                    "reset_expired",
                    f"reset #{r['id']} of {r['scope']} expired unapproved",
                    r["requested_by"],
                )
        cmds = {c["id"]: c for c in st.commands}
        procs = []
        for p in st.processes:
            states = dict(sorted(p.states.items()))
            prev = self._proc_states.get(p.presence)
            if prev is None or prev != (states, p.stale):
                if prev is not None or states:
                    what = (
                        "stale (process gone)"
                        if p.stale
                        else (
                            ", ".join(f"{k} {v}" for k, v in states.items()) or "all scopes ACTIVE"
                        )
                    )
                    with self._tl_lock:
                        self.timeline.append(
                            {
                                "wall_ns": time.time_ns(),
                                "source": "process",
                                "kind": "state",
                                "text": f"{p.name} (pid {p.pid} on {p.host}): {what}",
                            }
                        )
                self._proc_states[p.presence] = (states, p.stale)
            c = cmds.get(p.last_command_id)
            if (
                c is not None
                and c["kind"] in (1, 2)
                and not p.stale
                and p.gate_closed_ns >= c["written_ns"]
            ):
                self.latencies[(c["id"], p.presence)] = p.gate_closed_ns - c["written_ns"]
            procs.append(
                {
                    "host": p.host,
                    "pid": p.pid,
                    "name": p.name,
                    "states": states,
                    "last_command_id": p.last_command_id,
                    "heartbeat_ns": p.heartbeat_ns,
                    "stale": p.stale,
                }
            )
        while len(self.latencies) > 2000:
            self.latencies.pop(next(iter(self.latencies)))
        self.doc = {
            "directory": st.directory,
            "last_command_id": st.last_command_id,
            "latched": [
                {"scope": e["scope"], "state": e["state_name"], "command_id": e["command_id"]}
                for e in st.latched
            ],
            "processes": procs,
            "pending": self.pending.snapshot(),
            "timeline": self._timeline(),
            "latency": self._latency(cmds),
        }
        if self.journal_error:
            self.doc["error"] = self.journal_error

    def _timeline(self) -> list[dict[str, Any]]:
        with self._tl_lock:
            return sorted(self.timeline, key=lambda e: e.get("wall_ns", 0))[-100:]

    def _latency(self, cmds: dict[int, Any]) -> dict[str, Any]:
        vals = sorted(self.latencies.values())
        pct = {}
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)):
            if vals:
                pct[name] = vals[min(len(vals) - 1, int(q * len(vals)))]
        per_cmd: dict[int, int] = {}
        for (cid, _), v in self.latencies.items():
            per_cmd[cid] = max(per_cmd.get(cid, 0), v)
        return {
            "source": "ack",
            "samples": len(vals),
            "percentiles_ns": pct,
            "per_command_max_ns": [
                {"command_id": k, "ns": v} for k, v in sorted(per_cmd.items())[-30:]
            ],
        }

    def add_result(self, result: Any) -> None:
        for a in result.applied_by:
            if a.latency_ns is not None:
                self.latencies[(result.command_id, a.presence)] = a.latency_ns
