"""The `Console` object every endpoint shares: control plane, operators, sessions, login
limiter, pending resets and live state, plus the HTTP rules every response follows (session
cookie, security headers, bounded url-encoded form bodies, JSON refusals). It also runs the
poller that rebuilds the live state and wakes the event streams when it changes.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..control import ControlPlane
from .auth import LoginLimiter, Operators, Session, Sessions
from .forms import FieldErrors
from .live import LiveState
from .resets import PendingResets

log = logging.getLogger("killswitch_audit.console")

STATIC = Path(__file__).parent / "static"
MAX_BODY = 16 * 1024
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
    "form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Console:
    """The application state: control plane, operators, sessions, pending resets, live state."""

    def __init__(
        self,
        plane: ControlPlane,
        operators: Operators,
        *,
        secure: bool = False,
        reset_ttl_s: float = 300.0,
        poll_s: float = 0.05,
        limiter: Optional[LoginLimiter] = None,
        journal: Any = None,
    ):
        self.plane = plane
        self.operators = operators
        self.secure = secure
        self.cookie = "__Host-ksa_session" if secure else "ksa_session"
        self.sessions = Sessions()
        self.limiter = limiter or LoginLimiter()
        self.pending = PendingResets(reset_ttl_s)
        self.live = LiveState(plane, self.pending, journal)
        self.journal = journal
        self.poll_s = poll_s
        self._changed = asyncio.Event()
        self._stopping = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._files = {
            n: (STATIC / n).read_bytes()
            for n in ("index.html", "app.js", "style.css", "login.html")
        }

    # ---------------------------------------------------------------- live updates

    def stop_streams(self) -> None:
        """Ends the event streams (the server is shutting down: it waits for open
        connections, and a stream never ends by itself). Any thread."""
        self._stopping = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._changed.set)

    async def poller(self) -> None:
        self._loop = asyncio.get_running_loop()
        while not self._stopping:
            try:
                changed = self.live.due() and await run_in_threadpool(self.live.poll)
            except Exception as e:  # keep serving; the page shows the error
                log.exception("console poll failed")
                self.live.doc = {**self.live.doc, "error": f"poll failed: {e}"}
                changed = True
            if changed:
                ev, self._changed = self._changed, asyncio.Event()
                ev.set()
            await asyncio.sleep(self.poll_s)

    async def kick(self) -> None:
        """Rebuild now (after a command from this console), without waiting for the poll."""
        self.live._fingerprint = None
        if await run_in_threadpool(self.live.poll):
            ev, self._changed = self._changed, asyncio.Event()
            ev.set()

    # ---------------------------------------------------------------- helpers

    def session(self, request: Request) -> Optional[Session]:
        return self.sessions.get(request.cookies.get(self.cookie))

    def set_cookie(self, resp: Response, s: Session) -> None:
        resp.set_cookie(
            self.cookie,
            s.token,
            path="/",
            secure=self.secure,
            httponly=True,
            samesite="strict",
        )

    def headers(self, resp: Response) -> Response:
        resp.headers.update(SECURITY_HEADERS)
        if self.secure:
            resp.headers["Strict-Transport-Security"] = "max-age=31536000"
        return resp

    async def form(self, request: Request) -> dict[str, str]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip()
        if ctype != "application/x-www-form-urlencoded":
            raise FieldErrors({"_": "send application/x-www-form-urlencoded"})
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise FieldErrors({"_": f"request body over {MAX_BODY} bytes"})
        try:
            parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise FieldErrors({"_": "request body is not UTF-8"}) from None
        return {k: v[0] for k, v in parsed.items()}

    def refuse(self, status: int, message: str, **extra: Any) -> Response:
        return self.headers(JSONResponse({"ok": False, "error": message, **extra}, status))


def _json(console: Console, data: Any, status: int = 200) -> Response:
    return console.headers(JSONResponse(data, status))
