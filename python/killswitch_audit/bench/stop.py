"""The kill switch in fresh and idle processes: the first `emergency_stop` after a quiet spell
(`cold_stop`, one child process per sample), the CPU an idle process uses (`idle_cpu`),
persist latency after a quiet spell (`idle_persist`), and `emergency_stop` in a tight loop
(`warm_stop_loop`).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import time
from array import array
from pathlib import Path
from typing import Callable

from .persist import persist_latency
from .timing import PERCENTILES, percentile

# One fresh process with what a strategy process holds: a logger, a latency monitor watching
# it, a kill switch with one no-op stop handler. Modes:
#   stop IDLE_S: idle, time the first emergency_stop; idle 1 s more, time a cold empty call.
#   idle: say "ready" and idle until stdin closes (the parent reads its CPU time).
_COLD_CHILD = r"""
import json, sys, time
from killswitch_audit import _native
from killswitch_audit.killswitch import KillSwitch, KillSwitchReason
from killswitch_audit.monitor import LatencyMonitor
d, mode, idle_s, strategy = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
log = _native.AuditLogger(d, segment_size_mb=4, idle_strategy=strategy)
mon = LatencyMonitor()
mon.attach_logger(log)
ks = KillSwitch(log, mon, triggers=[], restore=False)
ks.add_stop_handler(lambda: None, "noop")
log.flush(1.0)
print("ready", flush=True)
if mode == "idle":
    sys.stdin.read()
else:
    def minflt():  # minor page faults of the whole process so far (/proc/self/stat field 10)
        with open("/proc/self/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[7])
    pc = time.perf_counter_ns
    time.sleep(idle_s)
    f0 = minflt()
    t0 = pc()
    rep = ks.emergency_stop(KillSwitchReason.MANUAL)
    call = pc() - t0
    faults = minflt() - f0
    time.sleep(1.0)
    t0 = pc()
    _native.noop_audit(3, 7, 100, -2500000)
    empty = pc() - t0
    time.sleep(0.2)
    t0 = pc()
    mon.record("first_use_of_a_new_name", 1000)
    new_op = pc() - t0
    print(json.dumps({"call_ns": call, "handlers_done_ns": rep.trigger_to_handlers_done_ns,
                      "block_ns": rep.trigger_to_block_ns, "empty_ns": empty, "ok": rep.ok,
                      "page_faults": faults, "new_op_record_ns": new_op}),
          flush=True)
mon.close()
log.close()
"""


def _spawn_cold(directory: Path, mode: str, idle_s: float, strategy: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _COLD_CHILD, str(directory), mode, str(idle_s), strategy],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError("cold-stop child did not start")
    return proc


def _pct_dict(values: list[float]) -> dict:
    v = sorted(values)
    return {
        "n": len(v),
        "p50_ns": percentile(v, 50),
        "p90_ns": percentile(v, 90),
        "p99_ns": percentile(v, 99),
        "max_ns": float(v[-1]) if v else float("nan"),
    }


def cold_stop(
    root: Path,
    processes: int = 30,
    idle_s: float = 1.0,
    stagger_s: float = 0.25,
    strategy: str = "backoff",
    progress: Callable[[str], None] = lambda s: None,
) -> dict:
    """The first `emergency_stop` of fresh processes after `idle_s` of quiet: total call time,
    trigger -> handlers done, trigger -> gate closed, and a cold empty PyO3 call in the same
    processes (after 1 s more of quiet). The processes start together and fire `stagger_s`
    apart, so no two stops share the 2 cores."""
    procs = []
    dirs = []
    try:
        for i in range(processes):
            d = root / f"cold-{i}"
            dirs.append(d)
            procs.append(_spawn_cold(d, "stop", idle_s + i * stagger_s, strategy))
        progress(f"cold stop: {processes} processes idle {idle_s:g} s, then stop")
        rows = []
        for p in procs:
            out, _ = p.communicate(timeout=idle_s + processes * stagger_s + 120)
            rows.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
    return {
        "processes": processes,
        "idle_s": idle_s,
        "strategy": strategy,
        "all_ok": all(r["ok"] for r in rows),
        **{k: _pct_dict([r[k] for r in rows]) for k in ("call_ns", "handlers_done_ns")},
        "block_ns": _pct_dict([r["block_ns"] for r in rows]),
        "empty_ns": _pct_dict([r["empty_ns"] for r in rows]),
        "new_op_record_ns": _pct_dict([r["new_op_record_ns"] for r in rows]),
        "page_faults": _pct_dict([r["page_faults"] for r in rows]),
    }


def _cpu_ns(pid: int) -> tuple[int, int]:
    """(utime+stime from /proc/PID/stat in ns, sum of the threads' schedstat run ns)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    run = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                run += int(f.read().split()[0])
        except OSError:
            pass
    return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK"), run


def idle_cpu(
    root: Path,
    processes: int = 3,
    seconds: float = 10.0,
    strategy: str = "backoff",
    settle_s: float = 1.0,
) -> dict:
    """CPU used by idle processes (logger + monitor + kill switch, nothing happening), as a
    share of one core: /proc/PID/stat utime+stime (10 ms ticks) and the threads' schedstat
    run time (ns), over `seconds` after `settle_s` of settling."""
    procs = []
    dirs = []
    try:
        for i in range(processes):
            d = root / f"idle-{strategy}-{i}"
            dirs.append(d)
            procs.append(_spawn_cold(d, "idle", 0.0, strategy))
        time.sleep(settle_s)
        before = [_cpu_ns(p.pid) for p in procs]
        t0 = time.monotonic_ns()
        time.sleep(seconds)
        after = [_cpu_ns(p.pid) for p in procs]
        wall = time.monotonic_ns() - t0
    finally:
        for p in procs:
            try:
                p.communicate(input="", timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
    stat = [(a[0] - b[0]) / wall for a, b in zip(after, before)]
    sched = [(a[1] - b[1]) / wall for a, b in zip(after, before)]
    return {
        "processes": processes,
        "seconds": seconds,
        "strategy": strategy,
        "stat_share": stat,
        "schedstat_share": sched,
        "max_share": max(max(stat), max(sched)),
    }


def idle_persist(root: Path, samples: int, quiet_s: float, strategy: str = "backoff") -> dict:
    """Kill-switch record visible to another process after `quiet_s` of quiet (the flusher
    parked, with `backoff`): `persist_latency` with a fixed gap."""
    gap_ms = quiet_s * 1e3
    d = root / f"quiet-{quiet_s:g}-{strategy}"
    d.mkdir(parents=True, exist_ok=True)
    try:
        r = persist_latency(
            d, samples, gap_ms=(gap_ms, gap_ms), segment_size_mb=4, idle_strategy=strategy
        )
    finally:
        shutil.rmtree(d, ignore_errors=True)
    lat = r.pop("latencies")
    r["p90_ns"] = percentile(lat, 90)
    r["quiet_s"] = quiet_s
    r["strategy"] = strategy
    return r


def warm_stop_loop(root: Path, n: int = 20_000) -> dict:
    """`emergency_stop` in a tight loop (logger + monitor + one no-op handler): p50..p99.97."""
    from .. import _native
    from ..killswitch import KillSwitch, KillSwitchReason
    from ..monitor import LatencyMonitor

    d = root / "warm-stop"
    log = _native.AuditLogger(d, segment_size_mb=16)
    mon = LatencyMonitor()
    mon.attach_logger(log)
    lat = array("q", bytes(8 * n))
    try:
        ks = KillSwitch(log, mon, triggers=[], restore=False)
        ks.add_stop_handler(lambda: None, "noop")
        pc = time.perf_counter_ns
        stop = ks.emergency_stop
        reason = KillSwitchReason.MANUAL
        gc_was = gc.isenabled()
        gc.disable()
        try:
            for i in range(n):
                t0 = pc()
                stop(reason)
                lat[i] = pc() - t0
        finally:
            if gc_was:
                gc.enable()
    finally:
        mon.close()
        log.close()
        shutil.rmtree(d, ignore_errors=True)
    s = array("q", sorted(lat))
    return {"n": n, **{f"p{q:g}_ns": percentile(s, q) for q in PERCENTILES}}
