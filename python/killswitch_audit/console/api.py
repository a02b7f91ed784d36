"""The risk console's read side: the JSON endpoints the page reads (`/api/me`: who is logged
in, their role and CSRF token; `/api/state`: the live state now) and the server-sent-events
stream `/api/stream` that pushes the live state on every change and ends when the session
does. All need a session; none changes anything.
"""

from __future__ import annotations

import asyncio
import json
import time

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from .context import Console, _json


def api_routes(console: Console) -> list[Route]:
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

    return [
        Route("/api/me", me),
        Route("/api/state", state),
        Route("/api/stream", stream),
    ]
