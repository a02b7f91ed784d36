"""Host-local control plane: an operator's halt -> every joined process (issue 14 point 3).

    python benches/control_host.py [--processes 20] [--rounds 20]

Starts N trading processes (AuditLogger + KillSwitch, nothing else), joined *without code*:
`KILLSWITCH_AUDIT_CONTROL` names the control directory. Each round an operator halts the firm
through `ControlPlane.halt` (journaled, published, durable) and resets it. Prints:

- `table visible`: command written -> a reader of the mapped state table (what every
  `allows()` consults) sees HALTED; measured by a thread spinning on the table in this process
  (GIL released), one sample per round. This is when every gate on the host answers "no";
- `applied and audited`: command written -> each process's watcher thread applied it to its
  KillSwitch (latched, audited in its own log), from the presence files' acks;
- `halt() returns`: the operator's whole call (journal fsync, publish, wait for every ack).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

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
        f"| {name} | {len(v)} | {_pct(v, 0.5):.1f} | {_pct(v, 0.9):.1f} "
        f"| {_pct(v, 0.99):.1f} | {max(v) / 1e3 if v else float('nan'):.1f} |"
    )


def _spin(table, out: list[int]) -> None:
    out[0] = table.spin_until(2, 5.0)  # UTC ns at which the table answered HALTED


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=20)
    a = ap.parse_args(argv)
    from killswitch_audit import _native
    from killswitch_audit.control import ControlPlane, init_directory

    base = Path(tempfile.mkdtemp(prefix="ksa-ctlbench-"))
    control = base / "control"
    init_directory(control)
    env = dict(os.environ, KILLSWITCH_AUDIT_CONTROL=str(control))
    procs = []
    try:
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
            assert p.stdout.readline().strip() == "ready"
        plane = ControlPlane(control)
        table = _native.ControlTable(str(control / "state"))
        visible: list[int] = []
        applied: list[int] = []
        call: list[int] = []
        for r in range(a.rounds):
            time.sleep(0.2)  # quiet between commands, as in production
            seen = [0]
            t = threading.Thread(target=_spin, args=(table, seen))
            t.start()
            time.sleep(0.01)
            t0 = time.perf_counter_ns()
            res = plane.halt("firm", operator="bench", reason=f"round {r}", wait_s=10.0)
            call.append(time.perf_counter_ns() - t0)
            t.join()
            if not res.ok or len(res.applied_by) != a.processes:
                print(f"round {r}: {len(res.missing)} process(es) did not ack", file=sys.stderr)
            if seen[0]:
                visible.append(max(0, seen[0] - res.written_ns))
            applied += res.latencies_ns()
            plane.reset("firm", operator="bench", reason=f"round {r} over", wait_s=10.0)
        print(
            f"{a.processes} processes, {a.rounds} halts; load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n"
        )
        print("| command written -> | samples | p50 µs | p90 µs | p99 µs | max µs |")
        print("|---|---:|---:|---:|---:|---:|")
        print(_row("table visible (every gate on the host closed)", visible))
        print(_row("applied and audited by each process", applied))
        print(_row("halt() returns (journal fsync + every ack)", call))
    finally:
        for p in procs:
            try:
                p.stdin.write("x\n")
                p.stdin.flush()
                p.wait(timeout=10)
            except Exception:
                p.kill()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
