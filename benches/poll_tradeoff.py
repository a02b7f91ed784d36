"""Trade-off of `emergency_poll_us`: kill-switch persist latency (another process sees the
record) against the flusher's CPU use while idle.

    python benches/poll_tradeoff.py [samples]

prints the Markdown table that BENCHMARKS.md quotes.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path

from killswitch_audit import _native
from killswitch_audit.bench import _READER, percentile


def thread_cpu_s(name: str) -> float:
    """CPU seconds (user + system) of this process's threads called `name`."""
    total = 0.0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() != name:
                    continue
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except FileNotFoundError:
            pass
    return total


def measure(poll_us: int, samples: int) -> tuple[array, float]:
    d = Path(tempfile.mkdtemp()) / "log"
    log = _native.AuditLogger(d, emergency_poll_us=poll_us)
    try:
        log.flush(1.0)
        cpu0, t0 = thread_cpu_s("ksa-flusher"), time.monotonic()
        time.sleep(2.0)
        idle_cpu = (thread_cpu_s("ksa-flusher") - cpu0) / (time.monotonic() - t0) * 100
        reader = [sys.executable, "-c", _READER, str(d), str(samples), "60"]
        proc = subprocess.Popen(reader, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        returned = {}
        rnd = random.Random(1)
        for _ in range(samples):
            seq = log.audit_kill_switch(1, 2, 3, 4)
            returned[seq] = time.monotonic_ns()
            time.sleep(rnd.uniform(0.3, 1.5) / 1e3)  # kill switches are rare: idle between
        out, _ = proc.communicate(timeout=90)
    finally:
        log.close()
    seen = {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}
    lat = array("q", sorted(seen[s] - t for s, t in returned.items() if s in seen))
    return lat, idle_cpu


def main() -> None:
    samples = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    print("| emergency_poll_us | persist p50 | persist p99 | max | flusher CPU while idle |")
    print("|---:|---:|---:|---:|---:|")
    for poll_us in (20, 50, 200, 1000):
        lat, cpu = measure(poll_us, samples)
        p50, p99, top = percentile(lat, 50) / 1e3, percentile(lat, 99) / 1e3, lat[-1] / 1e3
        print(f"| {poll_us} | {p50:.0f} µs | {p99:.0f} µs | {top:.0f} µs | {cpu:.1f} % |")


if __name__ == "__main__":
    main()
