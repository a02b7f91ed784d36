"""The risk console's web application (Starlette): pages, the JSON API the page posts to, and
the server-sent-events stream that pushes the control plane's state.

Every rule is enforced here, never only in the page: a session (cookie) for everything but
the login page, the session's CSRF token on every POST (form field `csrf` or header
`X-CSRF-Token`), the operator's role for each action (viewer < halter < risk), every form
field validated (errors returned per field, nothing half-applied). Halts and resets go through
`ControlPlane`, so they are journaled with the authenticated operator names.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import os
import threading
import time
from collections import deque
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
from ..control._layout import check_reason
from .auth import LoginLimiter, Operators, Session, Sessions, csrf_ok, role_allows
from .resets import PendingResets, ResetRefused

log = logging.getLogger("killswitch_audit.console")

STATIC = Path(__file__).parent / "static"
MAX_BODY = 16 * 1024
REASON_MIN, REASON_MAX = 3, 500
#: control-table field limits (ControlPlane refuses longer ones; checked here to name the field)
_FIELD_BYTES = (("account", 32), ("strategy", 40), ("venue", 24))
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
    "form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class FieldErrors(Exception):
    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def validate_scope(text: Any) -> str:
    """Canonical scope text (ValueError with the reason shown next to the field)."""
    from ..killswitch import Scope

    if not isinstance(text, str) or not text.strip():
        raise ValueError("a scope is required: firm, or e.g. account=A1;venue=XNAS")
    if len(text) > 255 or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ValueError("scope text: at most 255 printable characters")
    try:
        scope = Scope.parse(text)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{e}; write firm, or key=value pairs joined by ';' with keys "
            "account, strategy, symbol_id, venue"
        ) from None
    for what, most in _FIELD_BYTES:
        v = getattr(scope, what)
        if v is not None and (not v or len(v.encode()) > most):
            raise ValueError(f"scope {what} must be 1..{most} bytes, got {v!r}")
    return scope.text


def validate_reason(text: Any) -> str:
    if not isinstance(text, str):
        raise ValueError("a reason is required")
    v = text.strip()
    if len(v) < REASON_MIN:
        raise ValueError(f"a reason of at least {REASON_MIN} characters is required")
    if len(v) > REASON_MAX:
        raise ValueError(f"reason: at most {REASON_MAX} characters, got {len(v)}")
    return check_reason(v)


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


def _scope_and_reason(form: dict[str, str]) -> tuple[str, str, dict[str, str]]:
    """The two fields every command form has, checked; errors keyed by field name."""
    errors: dict[str, str] = {}
    scope = reason = ""
    try:
        scope = validate_scope(form.get("scope", ""))
    except ValueError as e:
        errors["scope"] = str(e)
    try:
        reason = validate_reason(form.get("reason", ""))
    except ValueError as e:
        errors["reason"] = str(e)
    return scope, reason, errors


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
        scope, reason, errors = _scope_and_reason(form)
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
        scope, reason, errors = _scope_and_reason(form)
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
