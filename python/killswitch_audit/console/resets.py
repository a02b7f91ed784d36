"""Four-eyes resets: one risk officer requests, a *different* one approves, only then is the
reset issued through the control plane (journaled with both names: operator = requester,
second_operator = approver). A request expires after `ttl_s`; pending requests live in the
console's memory only (a restart drops them, which resets nothing: the safe direction)."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional


class ResetRefused(Exception):
    """The approval (or cancellation) is not allowed; the message says why. Nothing changed."""


@dataclass
class ResetRequest:
    id: int
    scope: str
    requested_by: str
    reason: str
    created_wall: float
    expires_wall: float
    expires_mono: float
    state: str = "pending"  # pending | approved | cancelled | expired | failed
    approved_by: Optional[str] = None
    detail: str = ""

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("expires_mono")
        return d


class PendingResets:
    def __init__(self, ttl_s: float = 300.0, keep_done: int = 50):
        if ttl_s <= 0:
            raise ValueError(f"reset request ttl must be > 0 s, got {ttl_s}")
        self.ttl_s = ttl_s
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._reqs: dict[int, ResetRequest] = {}
        self._keep_done = keep_done
        #: bumped on every change (the page's live stream watches it)
        self.version = 0

    def _sweep(self, now: float) -> None:
        for r in self._reqs.values():
            if r.state == "pending" and now >= r.expires_mono:
                r.state = "expired"
                self.version += 1
        done = [r.id for r in self._reqs.values() if r.state != "pending"]
        for rid in done[: max(0, len(done) - self._keep_done)]:
            del self._reqs[rid]

    def request(self, scope: str, operator: str, reason: str) -> ResetRequest:
        now, wall = time.monotonic(), time.time()
        with self._lock:
            self._sweep(now)
            for r in self._reqs.values():
                if r.state == "pending" and r.scope == scope:
                    raise ResetRefused(
                        f"a reset of {scope} is already pending (request #{r.id} by "
                        f"{r.requested_by}); approve or cancel it"
                    )
            r = ResetRequest(
                next(self._ids), scope, operator, reason, wall, wall + self.ttl_s, now + self.ttl_s
            )
            self._reqs[r.id] = r
            self.version += 1
            return r

    def take_for_approval(self, rid: int, approver: str) -> ResetRequest:
        """Marks request `rid` approved by `approver` (ResetRefused: unknown, not pending,
        expired, or `approver` asked for it). The caller then issues the reset."""
        now = time.monotonic()
        with self._lock:
            self._sweep(now)
            r = self._reqs.get(rid)
            if r is None:
                raise ResetRefused(f"no reset request #{rid}")
            if r.state == "expired":
                raise ResetRefused(f"reset request #{rid} expired; request it again")
            if r.state != "pending":
                raise ResetRefused(f"reset request #{rid} is {r.state}, not pending")
            if r.requested_by.casefold() == approver.casefold():
                raise ResetRefused(
                    f"four eyes: {approver} requested reset #{rid} and may not approve it; "
                    "another risk officer must"
                )
            r.state = "approving"
            r.approved_by = approver
            self.version += 1
            return r

    def finish(self, r: ResetRequest, ok: bool, detail: str) -> None:
        with self._lock:
            r.state = "approved" if ok else "failed"
            r.detail = detail
            self.version += 1

    def cancel(self, rid: int, operator: str) -> ResetRequest:
        with self._lock:
            self._sweep(time.monotonic())
            r = self._reqs.get(rid)
            if r is None or r.state != "pending":
                raise ResetRefused(f"no pending reset request #{rid}")
            r.state = "cancelled"
            r.detail = f"cancelled by {operator}"
            self.version += 1
            return r

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            self._sweep(time.monotonic())
            return [r.public() for r in sorted(self._reqs.values(), key=lambda r: -r.id)]
