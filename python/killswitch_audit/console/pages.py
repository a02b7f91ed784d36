"""The risk console's pages: login (GET shows the form with a pre-session CSRF token, POST
checks the password under the login rate limit and issues a fresh session), logout, the
single page itself and its static files. Everything but the login page needs a session.
"""

from __future__ import annotations

import html
from typing import Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from .auth import csrf_ok
from .context import Console
from .forms import FieldErrors


def page_routes(console: Console) -> list[Route]:
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

    return [
        Route("/", index),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/app.js", static("app.js", "text/javascript")),
        Route("/style.css", static("style.css", "text/css")),
    ]
