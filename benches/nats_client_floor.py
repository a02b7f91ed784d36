"""The floor under the NATS plane's latency on this machine: N bare nats-py subscribers, no
killswitch-audit code at all, each watching the latch bucket (the KV watch the member uses) and
subscribed to its subject with a plain core subscription, while a driver puts 30 entries 0.2 s
apart. Prints, from the time taken just before each put, when each process received it, and the
slowest of the N (the peer of BENCHMARKS.md's "every gate closed").

    python benches/nats_client_floor.py [--processes 10] [--rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "control"))

CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, time
    import nats

    async def main(url):
        nc = await nats.connect(url)
        kv = await nc.jetstream().key_value("floor")
        core = {}

        async def on_core(msg):
            core[json.loads(msg.data)["n"]] = time.time_ns()

        await nc.subscribe("$KV.floor.>", cb=on_core)
        watch = await kv.watchall()
        print("ready", flush=True)
        out = []
        async for e in watch:
            if e is None or not e.value:
                continue
            d = json.loads(e.value)
            if d["n"] < 0:
                break
            out.append((d["n"], d["t"], time.time_ns(), core.get(d["n"])))
        print(json.dumps(out), flush=True)
        await nc.close()

    asyncio.run(main(sys.argv[1]))
    """
)


def pct(v: list[float], q: float) -> float:
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    import nats
    from nats.js.api import KeyValueConfig
    from natsfixtures import NatsServer, wait_jetstream

    tmp = Path(tempfile.mkdtemp(prefix="nats-floor-"))
    server = NatsServer(tmp / "store")
    server.start()
    kids: list[subprocess.Popen] = []
    try:
        wait_jetstream(server.url)

        async def setup() -> None:
            nc = await nats.connect(server.url)
            await nc.jetstream().create_key_value(KeyValueConfig(bucket="floor", history=16))
            await nc.close()

        asyncio.run(setup())
        for _ in range(args.processes):
            kids.append(
                subprocess.Popen(
                    [sys.executable, "-c", CHILD, server.url], stdout=subprocess.PIPE, text=True
                )
            )
        for k in kids:
            assert k.stdout is not None and k.stdout.readline().strip() == "ready"

        async def drive() -> None:
            nc = await nats.connect(server.url)
            kv = await nc.jetstream().key_value("floor")
            for n in range(args.rounds):
                await kv.put("firm", json.dumps({"n": n, "t": time.time_ns()}).encode())
                await asyncio.sleep(0.2)
            await kv.put("firm", json.dumps({"n": -1, "t": 0}).encode())
            await nc.close()

        asyncio.run(drive())
        watch: dict[int, list[float]] = {}
        core: dict[int, list[float]] = {}
        for k in kids:
            assert k.stdout is not None
            for n, t, t_watch, t_core in json.loads(k.stdout.readline()):
                watch.setdefault(n, []).append((t_watch - t) / 1e3)
                if t_core:
                    core.setdefault(n, []).append((t_core - t) / 1e3)
            k.wait()
        import os

        print(
            f"{args.processes} bare nats-py processes, {args.rounds} puts, single node; "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        print(
            "| received via -> | each p50 µs | each p99 µs | every p50 µs | every p90 µs | max µs |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for name, m in (("KV watch (the member's path)", watch), ("core subscription", core)):
            each = [x for v in m.values() for x in v]
            every = [max(v) for v in m.values()]
            print(
                f"| {name} | {pct(each, 0.5):.0f} | {pct(each, 0.99):.0f} | "
                f"{pct(every, 0.5):.0f} | {pct(every, 0.9):.0f} | {max(every):.0f} |"
            )
    finally:
        for k in kids:
            k.kill()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
