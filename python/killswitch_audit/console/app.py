"""The risk console's web application (Starlette): `build_app` assembles the routes of
pages.py (login, logout, the page), api.py (JSON reads, server-sent events) and commands.py
(halt, four-eyes reset) around one `Console` (context.py), and owns the lifespan: the poller,
the NATS latch watch, and their shutdown.

Every rule is enforced on the server, never only in the page: a session (cookie) for everything
but the login page, the session's CSRF token on every POST (form field `csrf` or header
`X-CSRF-Token`), the operator's role for each action (viewer < halter < risk), every form
field validated (forms.py; errors returned per field, nothing half-applied). Halts and resets
go through `ControlPlane`, so they are journaled with the authenticated operator names.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.applications import Starlette

from .api import api_routes
from .commands import command_routes
from .context import Console
from .pages import page_routes

__all__ = ["Console", "build_app"]


def build_app(console: Console) -> Starlette:
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

    routes = page_routes(console) + api_routes(console) + command_routes(console)
    return Starlette(routes=routes, lifespan=lifespan)
