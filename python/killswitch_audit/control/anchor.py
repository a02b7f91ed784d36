"""The off-host anchor of the audit logs on NATS JetStream (issue 14 point 7; docs/CONTROL.md).

A log's own hash chain proves that nothing inside it was changed, but not that its newest
segments were not deleted whole: a log cut after segment N still verifies. So a log publishes,
off the host, the chain head of every *sealed* segment and every kill-switch record (KILL_SWITCH,
RESET) to the stream `ksa_anchor` (subject `ksa.anchor.<log id>.seg|rec`, each with a
`Nats-Msg-Id` so publishing again stores nothing new), and `verify_anchor` (CLI:
`killswitch-audit verify LOG --anchor nats://...`) checks the log against it: every anchored
segment must still be there with the same chain head, every anchored kill-switch record with
the same seq, kind and time.

`Anchor(url, log_dir).publish()` publishes what is new since its last call; a NATS member
(nats_member.py) calls it for its process's log whenever a segment is sealed or its
kill-switch state changes. The log id is `<host>_<16 hex of sha256(real path)>`, or `log_id=`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from ..format import HEADER_SIZE, RecordKind, parse_segment_name, unpack_header
from . import _nats
from ._layout import ControlError, hostname

ANCHOR_STREAM = "ksa_anchor"
ANCHOR_PREFIX = "ksa.anchor"
_ID_BAD = re.compile(r"[^A-Za-z0-9_-]")
_KINDS = (RecordKind.KILL_SWITCH, RecordKind.RESET)


def log_id_of(log_dir: Any, host: Optional[str] = None) -> str:
    real = os.path.realpath(os.fspath(log_dir))
    digest = hashlib.sha256(real.encode()).hexdigest()[:16]
    return f"{_ID_BAD.sub('_', host or hostname())[:48]}_{digest}"


def _sealed_heads(log_dir: str) -> list[dict[str, Any]]:
    """The header of every sealed (closed) segment: index, records, chain head (no data read)."""
    out = []
    for name in sorted(os.listdir(log_dir)):
        idx = parse_segment_name(name)
        if idx is None:
            continue
        path = os.path.join(log_dir, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                h = unpack_header(os.pread(fd, HEADER_SIZE, 0), path)
            finally:
                os.close(fd)
        except Exception:
            continue  # unreadable: `verify` says so; nothing to anchor
        if h.closed:
            out.append(
                {
                    "segment": h.segment_index,
                    "records": h.chain_records,
                    "head": h.chain_head.hex(),
                    "first_seq": h.first_seq,
                }
            )
    return out


def _ks_records(log_dir: str) -> list[dict[str, Any]]:
    from ..reader import read_audit_log

    out = []
    for r in read_audit_log(log_dir, kinds=_KINDS, salvage=True):
        out.append(
            {"seq": r.seq, "wall_ns": r.wall_ns, "kind": RecordKind(r.kind).name, "code": r.code}
        )
    return out


async def ensure_stream(js: Any, url: _nats.NatsURL) -> None:
    """Creates the anchor stream when missing (an operator's first command does)."""
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    try:
        await js.stream_info(ANCHOR_STREAM)
    except NotFoundError:
        await js.add_stream(
            StreamConfig(
                name=ANCHOR_STREAM,
                description="killswitch-audit: chain heads and kill-switch records of the logs",
                subjects=[f"{ANCHOR_PREFIX}.>"],
                num_replicas=url.replicas,
                storage=StorageType.FILE,
                duplicate_window=120.0,
            )
        )


class Anchor:
    """Publishes one log's sealed chain heads and kill-switch records (what is new)."""

    def __init__(self, url: Any, log_dir: Any, log_id: Optional[str] = None):
        self.url = url if isinstance(url, _nats.NatsURL) else _nats.parse_url(str(url))
        self.log_dir = os.fspath(log_dir)
        self.log_id = log_id or log_id_of(self.log_dir)
        self._sent: set[str] = set()

    def pending(self) -> list[tuple[str, str, bytes]]:
        """(subject, msg id, body) of what this log has and this Anchor has not published."""
        out = []
        for h in _sealed_heads(self.log_dir):
            mid = f"{self.log_id}:seg:{h['segment']}:{h['records']}"
            if mid not in self._sent:
                body = json.dumps({**h, "log": self.log_id}, sort_keys=True).encode()
                out.append((f"{ANCHOR_PREFIX}.{self.log_id}.seg", mid, body))
        for r in _ks_records(self.log_dir):
            mid = f"{self.log_id}:rec:{r['seq']}"
            if mid not in self._sent:
                body = json.dumps({**r, "log": self.log_id}, sort_keys=True).encode()
                out.append((f"{ANCHOR_PREFIX}.{self.log_id}.rec", mid, body))
        return out

    async def publish_async(self, js: Any) -> int:
        """Publishes the pending items on `js`; returns how many were new."""
        import asyncio

        # reading the log is file I/O: off the event loop
        items = await asyncio.get_running_loop().run_in_executor(None, self.pending)
        if not items:
            return 0
        await ensure_stream(js, self.url)
        for subject, mid, body in items:
            await js.publish(subject, body, headers={"Nats-Msg-Id": mid})
            self._sent.add(mid)
        return len(items)

    def publish(self) -> int:
        """Connects, publishes what is new, disconnects (for scripts and cron)."""
        return _run(self.url, lambda js: self.publish_async(js))


def _run(url: _nats.NatsURL, fn: Any) -> Any:
    loop = _nats.LoopThread("ksa-anchor")

    async def main() -> Any:
        nc = await _nats.connect(url, name=f"killswitch-audit anchor pid {os.getpid()}")
        try:
            return await fn(nc.jetstream(timeout=_nats.API_TIMEOUT_S))
        finally:
            await nc.close()

    try:
        return loop.run(main(), 60.0)
    finally:
        loop.stop()


@dataclass
class AnchorReport:
    log_id: str
    segments_anchored: int = 0
    records_anchored: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


async def _anchored(js: Any, log_id: str) -> list[dict[str, Any]]:
    from nats.js.errors import NotFoundError

    out = []
    seq = 1
    subject = f"{ANCHOR_PREFIX}.{log_id}.>"
    while True:
        try:
            m = await js.get_msg(ANCHOR_STREAM, seq=seq, subject=subject, next=True)
        except NotFoundError:
            break
        try:
            d = json.loads(m.data)
            d["_kind"] = m.subject.rsplit(".", 1)[-1]
            out.append(d)
        except ValueError:
            pass
        seq = int(m.seq) + 1
    return out


def verify_anchor(log_dir: Any, url: Any, log_id: Optional[str] = None) -> AnchorReport:
    """Compares `log_dir` with what was anchored for it: a missing or changed sealed segment,
    or a missing kill-switch record, is a problem (the report names each)."""
    u = url if isinstance(url, _nats.NatsURL) else _nats.parse_url(str(url))
    lid = log_id or log_id_of(log_dir)

    async def fetch(js: Any) -> list[dict[str, Any]]:
        from nats.js.errors import NotFoundError

        try:
            await js.stream_info(ANCHOR_STREAM)
        except NotFoundError:
            return []
        return await _anchored(js, lid)

    try:
        anchored = _run(u, fetch)
    except ControlError:
        raise
    except Exception as e:
        raise ControlError(f"anchor {u.redacted}: {e!r}") from e
    rep = AnchorReport(lid)
    local = {h["segment"]: h for h in _sealed_heads(os.fspath(log_dir))}
    present = set()
    for name in os.listdir(os.fspath(log_dir)):
        idx = parse_segment_name(name)
        if idx is not None:
            present.add(idx)
    recs = {r["seq"]: r for r in _ks_records(os.fspath(log_dir))} if present else {}
    for a in anchored:
        if a["_kind"] == "seg":
            rep.segments_anchored += 1
            idx = int(a["segment"])
            h = local.get(idx)
            if idx not in present:
                rep.problems.append(
                    f"segment {idx} (sealed with {a['records']} records, chain head "
                    f"{a['head'][:16]}...) was anchored off-host and is missing from the log"
                )
            elif h is None:
                rep.problems.append(f"segment {idx} was anchored sealed and is not sealed now")
            elif (h["records"], h["head"]) != (a["records"], a["head"]):
                rep.problems.append(
                    f"segment {idx}: chain head {h['head'][:16]}... over {h['records']} records "
                    f"differs from the anchored {a['head'][:16]}... over {a['records']}"
                )
        elif a["_kind"] == "rec":
            rep.records_anchored += 1
            r = recs.get(int(a["seq"]))
            if r is None or (r["kind"], r["wall_ns"]) != (a["kind"], a["wall_ns"]):
                rep.problems.append(
                    f"{a['kind']} record seq {a['seq']} was anchored off-host and is "
                    + ("missing from the log" if r is None else f"different in the log ({r})")
                )
    return rep
