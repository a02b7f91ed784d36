"""What the NATS JetStream control plane shares between its operator and member sides
(docs/CONTROL.md): the URL, the buckets, the client's event-loop thread.

    nats://[user:password@]host:port[,host:port...][?replicas=3]

JetStream objects (created by the first side that may, with `replicas` from the URL, default 1):

  KV  ksa_latched    key = scope id (decimal); value = the scope's last command (JSON: state,
                     scope fields, command uuid, kind, operator(s), reason, origin host,
                     written_ns). The entry's *revision* is the command id: one stream, so
                     commands are totally ordered; each put carries `Nats-Msg-Id` = the
                     command's uuid, so a command published twice is stored once.
  KV  ksa_presence   key = host.pid.token; one heartbeat per joined process (TTL'd).
  stream ksa_commands  subject ksa.commands: every command again, a history for `events()`.

`nats-py` (the official pure-Python client) is an optional extra, imported here only.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Awaitable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar
from urllib.parse import parse_qs, unquote

from ._layout import ControlError

LATCH_BUCKET = "ksa_latched"
PRESENCE_BUCKET = "ksa_presence"
COMMANDS_STREAM = "ksa_commands"
COMMANDS_SUBJECT = "ksa.commands"
LATCH_HISTORY = 16
#: the member and the plane wait at most this long for a JetStream API answer
API_TIMEOUT_S = 2.0

_HOSTPORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.\-]+)(:\d{1,5})?$")
_KEY_BAD = re.compile(r"[^-/_=.a-zA-Z0-9]")

T = TypeVar("T")


@dataclass(frozen=True)
class NatsURL:
    scheme: str
    servers: tuple[str, ...]  # host:port
    user: Optional[str]
    password: Optional[str]
    replicas: int

    @property
    def redacted(self) -> str:
        """The URL without its password (for logs, status and audit records)."""
        who = f"{self.user}@" if self.user else ""
        q = f"?replicas={self.replicas}" if self.replicas != 1 else ""
        return f"{self.scheme}://{who}{','.join(self.servers)}{q}"

    def server_urls(self) -> list[str]:
        return [f"{self.scheme}://{s}" for s in self.servers]


def parse_url(text: str) -> NatsURL:
    """Parses a `nats://` control URL; ValueError naming the bad part (never the password)."""
    t = text.strip()
    scheme, sep, rest = t.partition("://")
    if not sep or scheme not in ("nats", "tls"):
        raise ValueError("control URL must start with nats:// or tls://")
    rest, _, query = rest.partition("?")
    user = password = None
    if "@" in rest:
        cred, _, rest = rest.rpartition("@")
        u, _, p = cred.partition(":")
        user, password = unquote(u) or None, unquote(p) or None
    servers = tuple(s.strip() for s in rest.split(",") if s.strip())
    if not servers:
        raise ValueError(f"control URL {scheme}://...: no host:port")
    for s in servers:
        if not _HOSTPORT.match(s):
            raise ValueError(f"control URL: bad server {s!r} (host:port)")
    servers = tuple(s if re.search(r":\d+$", s) else f"{s}:4222" for s in servers)
    replicas = 1
    for k, vs in parse_qs(query, keep_blank_values=True).items():
        if k != "replicas":
            raise ValueError(f"control URL: unknown parameter {k!r} (only replicas)")
        if not vs[-1].isdigit() or not 1 <= int(vs[-1]) <= 5:
            raise ValueError(f"control URL: replicas must be 1..5, got {vs[-1]!r}")
        replicas = int(vs[-1])
    return NatsURL(scheme, servers, user, password, replicas)


def import_nats() -> Any:
    try:
        import nats
        import nats.js.api
    except ImportError as e:
        raise ControlError(
            "the NATS control plane needs the nats extra: pip install 'killswitch-audit[nats]'"
        ) from e
    return nats


def presence_key(host: str, pid: int, token: str) -> str:
    return f"{_KEY_BAD.sub('_', host) or 'host'}.{pid}.{token}"


class LoopThread:
    """An asyncio loop on a daemon thread: the NATS client lives there; callers hand it
    coroutines with `run` (blocking, with a timeout) or `submit`."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Awaitable[T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]

    def run(self, coro: Awaitable[T], timeout: float) -> T:
        return self.submit(coro).result(timeout)

    def stop(self) -> None:
        if self.loop.is_closed():
            return

        async def _cancel_all() -> None:
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.submit(_cancel_all()).result(2.0)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join(2.0)
        if not self._thread.is_alive():
            self.loop.close()


async def connect(
    url: NatsURL,
    *,
    name: str,
    on_error: Optional[Callable[[Exception], Awaitable[None]]] = None,
    on_disconnect: Optional[Callable[[], Awaitable[None]]] = None,
    on_reconnect: Optional[Callable[[], Awaitable[None]]] = None,
    connect_timeout: float = 2.0,
    forever: bool = True,
) -> Any:
    """A connected client to any server of the URL that reconnects forever (a member), or
    (`forever=False`, an operator's one command) gives up after two more rounds of the servers.
    `$KILLSWITCH_AUDIT_NATS_CREDS` may name a NATS credentials file (JWT + nkey seed)."""
    nats = import_nats()

    async def _noop(*_a: Any) -> None:
        return None

    opts: dict[str, Any] = dict(
        servers=url.server_urls(),
        name=name,
        connect_timeout=connect_timeout,
        allow_reconnect=True,
        max_reconnect_attempts=-1 if forever else 2,
        reconnect_time_wait=0.2,
        ping_interval=1,
        max_outstanding_pings=2,
        error_cb=on_error or _noop,
        disconnected_cb=on_disconnect or _noop,
        reconnected_cb=on_reconnect or _noop,
    )
    if url.user:
        opts["user"] = url.user
        opts["password"] = url.password or ""
    creds = os.environ.get("KILLSWITCH_AUDIT_NATS_CREDS", "").strip()
    if creds:
        opts["user_credentials"] = creds
    try:
        return await nats.connect(**opts)
    except Exception as e:
        raise ControlError(f"cannot connect to the control plane {url.redacted}: {e!r}") from e


async def latch_bucket(js: Any, url: NatsURL, create: bool) -> Any:
    """The latch bucket (created with the URL's replicas when missing and `create`)."""
    from nats.js.api import KeyValueConfig, StorageType
    from nats.js.errors import BucketNotFoundError

    try:
        return await js.key_value(LATCH_BUCKET)
    except BucketNotFoundError:
        if not create:
            raise
    return await js.create_key_value(
        KeyValueConfig(
            bucket=LATCH_BUCKET,
            description="killswitch-audit: latched halts per scope (docs/CONTROL.md)",
            history=LATCH_HISTORY,
            replicas=url.replicas,
            storage=StorageType.FILE,
        )
    )


async def presence_bucket(js: Any, url: NatsURL, ttl_s: float, create: bool) -> Any:
    from nats.js.api import KeyValueConfig, StorageType
    from nats.js.errors import BucketNotFoundError

    try:
        return await js.key_value(PRESENCE_BUCKET)
    except BucketNotFoundError:
        if not create:
            raise
    return await js.create_key_value(
        KeyValueConfig(
            bucket=PRESENCE_BUCKET,
            description="killswitch-audit: heartbeats of joined processes",
            history=1,
            ttl=ttl_s,
            replicas=url.replicas,
            storage=StorageType.MEMORY,
        )
    )


async def commands_stream(js: Any, url: NatsURL) -> None:
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    try:
        await js.stream_info(COMMANDS_STREAM)
    except NotFoundError:
        await js.add_stream(
            StreamConfig(
                name=COMMANDS_STREAM,
                description="killswitch-audit: every control command (history)",
                subjects=[COMMANDS_SUBJECT],
                num_replicas=url.replicas,
                storage=StorageType.FILE,
                duplicate_window=120.0,
            )
        )


async def retry(
    make: Callable[[], Awaitable[T]],
    deadline: float,
    final: Optional[Callable[[], Optional[Exception]]] = None,
) -> T:
    """`await make()`, again on a JetStream API timeout or a transient server answer until
    `deadline` (time.monotonic()): a cluster that lost a node elects new leaders for a few
    seconds. Everything retried here is idempotent (lookups, watches, publishes with a
    Nats-Msg-Id). `final()` returning an exception (a permission refusal seen meanwhile)
    raises it at once."""
    import time

    import nats.errors
    import nats.js.errors

    delay = 0.05
    while True:
        stop = final() if final is not None else None
        if stop is not None:
            raise stop
        try:
            return await make()
        except nats.errors.TimeoutError:
            if time.monotonic() + delay >= deadline:
                raise
        except nats.js.errors.APIError as e:
            # 503/500 while a leader is elected; anything else is final
            if e.code not in (500, 503) or time.monotonic() + delay >= deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(0.5, delay * 2)
