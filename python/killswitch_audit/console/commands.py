"""The risk console's commands: halt (role halter) and the four-eyes reset (request, approve by
a second operator, cancel; role risk). `action` wraps each one: session, the operator still in
the operators file, form body, CSRF token, role -- refused with 401/403 before the command
runs. Halts and resets go through `ControlPlane`, journaled with the operators' names.
"""

from __future__ import annotations

import time
from typing import Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..control import ControlError, ControlRefused
from .auth import Session, csrf_ok, role_allows
from .context import Console, _json
from .forms import FieldErrors, _scope_and_reason
from .resets import ResetRefused


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


def command_routes(console: Console) -> list[Route]:
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

    return [
        Route("/api/halt", halt, methods=["POST"]),
        Route("/api/reset/request", reset_request, methods=["POST"]),
        Route("/api/reset/approve", reset_approve, methods=["POST"]),
        Route("/api/reset/cancel", reset_cancel, methods=["POST"]),
    ]
