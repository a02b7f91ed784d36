"""The risk console's web application (Starlette): pages, the JSON API the page posts to, and
the server-sent-events stream that pushes the control plane's state.

Every rule is enforced here, never only in the page: a session (cookie) for everything but
the login page, the session's CSRF token on every POST (form field `csrf` or header
`X-CSRF-Token`), the operator's role for each action (viewer < halter < risk), every form
field validated (errors returned per field, nothing half-applied). Halts and resets go through
`ControlPlane`, so they are journaled with the authenticated operator names.

Here: the `Console` (sessions, cookies, headers, body limits) and the routes; the field checks
are in forms.py, what the page shows (and when it changed) in live.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from ..control import ControlError, ControlPlane, ControlRefused
from .auth import LoginLimiter, Operators, Session, Sessions, csrf_ok, role_allows
from .forms import FieldErrors, scope_and_reason
from .live import LiveState
from .resets import PendingResets, ResetRefused

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


def action(console: Console, role: str) -> Callable:
    """Wraps a POST endpoint: session, CSRF, role, form parsing -- in that order, all refused
    with 401/403 before the endpoint runs."""

    def wrap(fn: Callable) -> Callable:
        async def endpoint(request: Request) -> Response:
            s = console.session(request)
            if s is None or s.operator is None:
                return console.refuse(401, "not logged in")
            # the operators file decides now, not at login: a removed operator is logged
            # out, a changed role applies at once
            op = await run_in_threadpool(console.operators.get, s.operator)
            if op is None:
                console.sessions.drop(s.token)
                return console.refuse(401, f"operator {s.operator} is no longer in the file")
            s.role = op.role
            try:
                form = await console.form(request)
            except FieldErrors as e:
                return console.refuse(400, "bad request", errors=e.errors)
            sent = form.get("csrf") or request.headers.get("x-csrf-token")
            if not csrf_ok(s, sent):
                console.live.note(
                    "refused", f"{request.url.path}: missing or wrong CSRF token", s.operator
                )
                return console.refuse(403, "missing or wrong CSRF token")
            if not role_allows(s.role, role):
                console.live.note(
                    "refused",
                    f"{request.url.path}: role {s.role} may not (needs {role})",
                    s.operator,
                )
                return console.refuse(403, f"your role ({s.role}) may not do this; needs {role}")
            try:
                return await fn(request, s, form)
            except FieldErrors as e:
                return console.refuse(400, "invalid input", errors=e.errors)

        return endpoint

    return wrap


def build_app(console: Console) -> Starlette:
    async def login_page(request: Request, error: str = "", status: int = 200) -> Response:
        s = console.session(request)
        if s is not None and s.operator is not None and not error:
            return RedirectResponse("/", 303)
        pre = s if s is not None and s.operator is None else console.sessions.new(None)
        page = console._files["login.html"].decode()
        page = page.replace("{{csrf}}", html.escape(pre.csrf)).replace(
            "{{error}}", html.escape(error)
        )
        resp = console.headers(HTMLResponse(page, status))
        console.set_cookie(resp, pre)
        return resp

    async def login(request: Request) -> Response:
        pre = console.session(request)
        try:
            form = await console.form(request)
        except FieldErrors as e:
            return await login_page(request, e.errors["_"], 400)
        if pre is None or not csrf_ok(pre, form.get("csrf")):
            return console.refuse(403, "missing or wrong CSRF token (reload the login page)")
        name = form.get("operator", "").strip()[:64]
        client = request.client.host if request.client else "?"
        wait = console.limiter.retry_after(client, name)
        if wait > 0:
            console.live.note("login_refused", f"rate limited ({client})", name)
            return await login_page(
                request, f"too many failed logins: try again in {int(wait) + 1} s", 429
            )
        op = await run_in_threadpool(console.operators.authenticate, name, form.get("password", ""))
        if op is None:
            console.limiter.failed(client, name)
            console.live.note("login_failed", f"wrong operator or password ({client})", name)
            return await login_page(request, "wrong operator name or password", 401)
        console.sessions.drop(pre.token)  # a fresh token after login: no session fixation
        s = console.sessions.new(op.name, op.role)
        console.live.note("login", f"logged in as {op.role}", op.name)
        resp = console.headers(RedirectResponse("/", 303))
        console.set_cookie(resp, s)
        return resp

    async def logout(request: Request) -> Response:
        s = console.session(request)
        try:
            form = await console.form(request)
        except FieldErrors as e:
            return console.refuse(400, "bad request", errors=e.errors)
        if s is None or not csrf_ok(s, form.get("csrf")):
            return console.refuse(403, "missing or wrong CSRF token")
        console.sessions.drop(s.token)
        resp = console.headers(RedirectResponse("/login", 303))
        resp.delete_cookie(
            console.cookie, path="/", secure=console.secure, httponly=True, samesite="strict"
        )
        return resp

    async def index(request: Request) -> Response:
        s = console.session(request)
        if s is None or s.operator is None:
            return RedirectResponse("/login", 303)
        return console.headers(HTMLResponse(console._files["index.html"]))

    def static(name: str, ctype: str) -> Callable:
        async def serve(request: Request) -> Response:
            return console.headers(Response(console._files[name], media_type=ctype))

        return serve

    async def me(request: Request) -> Response:
        s = console.session(request)
        if s is None or s.operator is None:
            return console.refuse(401, "not logged in")
        return _json(
            console,
            {
                "operator": s.operator,
                "role": s.role,
                "csrf": s.csrf,
                "reset_ttl_s": console.pending.ttl_s,
            },
        )

    async def state(request: Request) -> Response:
        s = console.session(request)
        if s is None or s.operator is None:
            return console.refuse(401, "not logged in")
        return _json(console, {**console.live.doc, "now_ns": time.time_ns()})

    async def stream(request: Request) -> Response:
        s = console.session(request)
        if s is None or s.operator is None:
            return console.refuse(401, "not logged in")

        async def events():
            sent = -1
            while not console._stopping:
                ev = console._changed  # taken before the check: a change after it sets ev
                if console.live.version != sent:
                    sent = console.live.version
                    doc = {**console.live.doc, "now_ns": time.time_ns()}
                    yield f"event: state\ndata: {json.dumps(doc, default=str)}\n\n"
                    continue
                try:
                    await asyncio.wait_for(ev.wait(), 15.0)
                except asyncio.TimeoutError:
                    yield ": keep-alive\n\n"
                if console.sessions.get(s.token) is None:
                    yield "event: logout\ndata: {}\n\n"
                    return

        resp = StreamingResponse(events(), media_type="text/event-stream")
        resp.headers["X-Accel-Buffering"] = "no"
        return console.headers(resp)

    @action(console, "halter")
    async def halt(request: Request, s: Session, form: dict[str, str]) -> Response:
        received = time.time_ns()
        scope, reason, errors = scope_and_reason(form)
        mode = form.get("mode", "halt")
        if mode not in ("halt", "reduce_only"):
            errors["mode"] = f"mode must be halt or reduce_only, got {mode!r}"
        if form.get("confirm") != "yes":
            errors["confirm"] = "confirm the halt (confirm=yes)"
        if errors:
            raise FieldErrors(errors)
        try:
            res = await run_in_threadpool(
                console.plane.halt,
                scope,
                mode == "reduce_only",
                operator=s.operator,
                reason=reason,
            )
        except ControlRefused as e:
            console.live.note("refused", f"halt {scope}: {e}", s.operator)
            return console.refuse(403, str(e))
        except (ControlError, ValueError) as e:
            return console.refuse(
                500 if isinstance(e, ControlError) else 400,
                str(e),
                errors={"scope": str(e)} if isinstance(e, ValueError) else {},
            )
        console.live.add_result(res)
        await console.kick()
        d = res.to_dict()
        d["received_ns"] = received
        return _json(console, {"ok": True, "result": d})

    @action(console, "risk")
    async def reset_request(request: Request, s: Session, form: dict[str, str]) -> Response:
        scope, reason, errors = scope_and_reason(form)
        if errors:
            raise FieldErrors(errors)
        try:
            r = console.pending.request(scope, s.operator, reason)
        except ResetRefused as e:
            raise FieldErrors({"scope": str(e)}) from None
        console.live.note("reset_requested", f"reset #{r.id} of {scope}: {reason}", s.operator)
        await console.kick()
        return _json(console, {"ok": True, "request": r.public()})

    def _rid(form: dict[str, str]) -> int:
        v = form.get("id", "")
        if not v.isdigit() or len(v) > 9:
            raise FieldErrors({"id": f"request id must be a number, got {v[:20]!r}"})
        return int(v)

    @action(console, "risk")
    async def reset_approve(request: Request, s: Session, form: dict[str, str]) -> Response:
        rid = _rid(form)
        try:
            r = console.pending.take_for_approval(rid, s.operator)
        except ResetRefused as e:
            console.live.note("refused", f"approve reset #{rid}: {e}", s.operator)
            await console.kick()
            return console.refuse(403 if "four eyes" in str(e) else 409, str(e))
        try:
            res = await run_in_threadpool(
                console.plane.reset,
                r.scope,
                operator=r.requested_by,
                reason=r.reason,
                second_operator=s.operator,
            )
        except (ControlError, ValueError) as e:
            console.pending.finish(r, False, str(e))
            console.live.note("reset_failed", f"reset #{rid} of {r.scope}: {e}", s.operator)
            await console.kick()
            return console.refuse(500, f"the reset was not issued: {e}")
        detail = f"command {res.command_id}: applied by {len(res.applied_by)} process(es)"
        if res.missing:
            detail += f", {len(res.missing)} did not answer"
        if res.still_restricted:
            detail += f", {len(res.still_restricted)} refused it and stay halted"
        console.pending.finish(r, True, detail)
        console.live.note(
            "reset_approved",
            f"reset #{rid} of {r.scope} (requested by {r.requested_by})",
            s.operator,
        )
        await console.kick()
        return _json(console, {"ok": True, "request": r.public(), "result": res.to_dict()})

    @action(console, "risk")
    async def reset_cancel(request: Request, s: Session, form: dict[str, str]) -> Response:
        rid = _rid(form)
        try:
            r = console.pending.cancel(rid, s.operator)
        except ResetRefused as e:
            return console.refuse(409, str(e))
        console.live.note("reset_cancelled", f"reset #{rid} of {r.scope}", s.operator)
        await console.kick()
        return _json(console, {"ok": True, "request": r.public()})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        tasks = [asyncio.create_task(console.poller())]
        if console.live.remote:  # a NATS plane: wake the poller on every latch change
            from .nats_watch import watch_latches

            tasks.append(
                asyncio.create_task(
                    watch_latches(console.plane, console.live.wake, lambda: console._stopping)
                )
            )
        try:
            yield
        finally:
            console._stopping = True
            console._changed.set()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if console.journal is not None:
                console.journal.close()

    routes = [
        Route("/", index),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/app.js", static("app.js", "text/javascript")),
        Route("/style.css", static("style.css", "text/css")),
        Route("/api/me", me),
        Route("/api/state", state),
        Route("/api/stream", stream),
        Route("/api/halt", halt, methods=["POST"]),
        Route("/api/reset/request", reset_request, methods=["POST"]),
        Route("/api/reset/approve", reset_approve, methods=["POST"]),
        Route("/api/reset/cancel", reset_cancel, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
