"""Persist latency: a reader *process* (`_READER`) polls the segment file's committed count
through its own mmap and timestamps each kill-switch record's arrival with CLOCK_MONOTONIC;
`persist_latency` is the ns from the call's return to that arrival, with the flusher's
run-queue wait per wakeup beside it.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from array import array
from pathlib import Path
from typing import Any, Optional

from .timing import ARGS, percentile

_READER = r"""
import mmap, os, struct, sys, time, json, glob
d = sys.argv[1]; want = int(sys.argv[2]); deadline = time.monotonic() + float(sys.argv[3])
segs = sorted(glob.glob(os.path.join(d, "*.seg")))
fd = os.open(segs[-1], os.O_RDONLY)
mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
u64 = struct.Struct("<Q").unpack_from
rec = struct.Struct("<Q16xB").unpack_from
committed = u64(mm, 56)[0]
seen = {}
now = time.clock_gettime_ns
MONO = time.CLOCK_MONOTONIC
yield_cpu = os.sched_yield
try:  # never a real-time spinner: under `chrt -f` it would trip the kernel's RT throttling
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
except OSError:
    pass
print("ready", flush=True)
while len(seen) < want and time.monotonic() < deadline:
    c = u64(mm, 56)[0]
    if c == committed:
        yield_cpu()  # 2 cores: let the flusher run when it shares this one
        continue
    t = now(MONO)
    for i in range(committed, c):
        seq, kind = rec(mm, 4096 + 64 * i)
        if kind == 1:
            seen[seq] = t
    committed = c
print(json.dumps(seen), flush=True)
"""


def _thread_schedstat(name: str) -> Optional[tuple[int, int, int]]:
    """(ns on CPU, ns waiting in the run queue, timeslices) of this process's thread `name`
    (/proc/self/task/*/schedstat), or None."""
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() != name:
                    continue
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                run, wait, slices = (int(x) for x in f.read().split()[:3])
            return run, wait, slices
    except OSError:
        pass
    return None


def persist_latency(
    root: Path, samples: int, gap_ms: tuple[float, float] = (0.3, 1.5), **logger_kwargs: Any
) -> dict:
    """Kill-switch record visible to another process: ns from the call's return to the
    reader process seeing the committed count cover it (both CLOCK_MONOTONIC)."""
    from .. import _native

    d = root / "persist"
    logger = _native.AuditLogger(d, **logger_kwargs)
    try:
        logger.flush(1.0)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _READER,
                str(d),
                str(samples),
                str(30 + samples * gap_ms[1] / 1e3),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("persist reader did not start")
        returned: dict[int, int] = {}
        sched0 = _thread_schedstat("ksa-flusher")
        mono = time.monotonic_ns
        ks = logger.audit_kill_switch
        a, b, c, e = ARGS
        rnd = random.Random(1)
        for _ in range(samples):
            seq = ks(a, b, c, e)
            returned[seq] = mono()
            # Idle between kill switches (they are rare), a random gap so the calls do not
            # line up with the flusher's poll period.
            time.sleep(rnd.uniform(*gap_ms) / 1e3)
        sched1 = _thread_schedstat("ksa-flusher")
        out, _ = proc.communicate(timeout=60)
        seen = {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}
    finally:
        logger.close()
    lat = array("q", sorted(seen[s] - t for s, t in returned.items() if s in seen))
    # The flusher wakes every emergency_poll; on a busy machine it first waits for a CPU.
    wait_per_wakeup = float("nan")
    if sched0 and sched1 and sched1[2] > sched0[2]:
        wait_per_wakeup = (sched1[1] - sched0[1]) / (sched1[2] - sched0[2])
    return {
        "flusher_runqueue_wait_ns_per_wakeup": wait_per_wakeup,
        "samples": samples,
        "seen": len(lat),
        "missing": samples - len(lat),
        "p50_ns": percentile(lat, 50),
        "p99_ns": percentile(lat, 99),
        "max_ns": float(lat[-1]) if lat else float("nan"),
        "latencies": lat,
    }
