"""Wakes the console's poller the moment a NATS plane's latch bucket changes.

The poller reads a NATS plane's `status()` every 200 ms (live.py `LiveState`); a halt stored
right after a read would reach the page up to 200 ms plus one read later. This task holds one
connection that watches the `ksa_latched` bucket and calls `wake()` on every entry, so the next
poll tick (50 ms) reads the new state. It only speeds the page up: when it cannot connect it
retries every second and the 200 ms reads carry on (the page shows their errors). Presence
heartbeats are not watched: one per member per second would turn into a read each.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Callable

log = logging.getLogger("killswitch_audit.console")


async def watch_latches(plane: Any, wake: Callable[[], None], stopping: Callable[[], bool]) -> None:
    """Runs until `stopping()` (or cancelled); `plane` is a `NatsControlPlane`."""
    import nats.errors

    from ..control import _nats

    while not stopping():
        nc = None
        try:
            nc = await _nats.connect(
                plane.url, name=f"killswitch-audit console pid {os.getpid()}", forever=True
            )
            js = nc.jetstream(timeout=_nats.API_TIMEOUT_S)
            kv = await _nats.latch_bucket(js, plane.url, plane.create)
            watcher = await kv.watchall()
            try:
                while not stopping():
                    try:
                        await watcher.updates(timeout=5.0)
                    except nats.errors.TimeoutError:
                        continue
                    wake()
            finally:
                await watcher.stop()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the 200 ms reads go on; try again shortly
            log.debug("latch watch of %s: %r", plane.directory, e)
            await asyncio.sleep(1.0)
        finally:
            if nc is not None:
                try:
                    await nc.close()
                except Exception:
                    pass
