"""`killswitch-audit bench`: the audit call next to its peers, side by side in one run.

Every peer does the same work per call: audit one kill-switch event with four integers
(reason 3, symbol 7, position 100, P&L -2,500,000 cents). The peers:

- ``floor``: ``_native.noop_audit`` - an empty PyO3 call with the same four arguments;
- ``native_kill_switch`` / ``native_trade``: ``AuditLogger.audit_kill_switch`` / ``audit_trade``;
- ``native_kill_switch_stalled``: ``audit_kill_switch`` with the main ring full (filled past
  120,000 records) and the flusher stalled (the ``_set_paused`` test hook);
- ``direct_kill_switch`` / ``direct_trade``: the same calls on the direct engine
  (``audit_system.engine: direct``: the call writes its record with ``pwrite`` itself);
- ``logging_queue``: stdlib ``QueueHandler`` -> ``QueueListener`` -> ``FileHandler``;
- ``os_write``: a synchronous ``os.write`` of each packed 64-byte record.

Per-call latency: single calls timed with ``time.perf_counter_ns``, in batches that take turns
between peers (so machine noise lands on all of them alike), the median cost of the timer
itself subtracted, the garbage collector off while timing. Percentiles p50, p99, p99.9,
p99.97 and max, and ratios against the floor. Throughput: a tight loop per peer, no timer
inside. Persist latency: a reader *process* polls the segment file's committed count through
its own mmap and timestamps each kill-switch record's arrival with CLOCK_MONOTONIC.

Run ``python -m killswitch_audit.bench --quick`` for a run of seconds.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import logging.handlers
import math
import os
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

log = logging.getLogger("killswitch_audit.bench")

ARGS = (3, 7, 100, -2_500_000)
"""The four integers every peer audits: reason, symbol, position size, P&L cents."""
TRADE_ARGS = (7, 100, 10_125, 1)
"""`audit_trade`'s four: symbol, quantity, price cents, order id."""

PERCENTILES = (50.0, 99.0, 99.9, 99.97)
MAIN_FILL = 120_000
"""The stalled scenario fills the main ring past this many records (DESIGN.md)."""


@dataclass
class Sizes:
    rounds: int
    batch: int
    stalled_rounds: int
    stalled_batch: int
    throughput_s: float
    persist_samples: int
    memory_records: int
    cold_processes: int = 30
    idle_cpu_s: float = 10.0


QUICK = Sizes(
    rounds=4,
    batch=5_000,
    stalled_rounds=4,
    stalled_batch=5_000,
    throughput_s=0.3,
    persist_samples=300,
    memory_records=1_000_000,
    cold_processes=5,
    idle_cpu_s=3.0,
)
FULL = Sizes(
    rounds=30,
    batch=10_000,
    stalled_rounds=30,
    stalled_batch=8_000,
    throughput_s=1.5,
    persist_samples=2_000,
    memory_records=10_000_000,
)


@dataclass
class PeerResult:
    name: str
    what: str
    samples: array = field(default_factory=lambda: array("q"))
    throughput: Optional[float] = None
    note: str = ""

    def pct(self, p: float) -> float:
        return percentile(self.samples, p)


def percentile(sorted_or_not: Any, p: float) -> float:
    """Nearest-rank percentile of a sequence (sorted in place when it is an array)."""
    data = sorted_or_not
    n = len(data)
    if n == 0:
        return float("nan")
    k = min(n - 1, max(0, math.ceil(p / 100.0 * n) - 1))
    return float(data[k])


# ------------------------------------------------------------------------ timing primitives


def _time_calls(f: Callable[..., Any], n: int, out: array, args: tuple = ARGS) -> None:
    """Appends the duration (ns, timer included) of `n` single calls of `f(*args)` to `out`."""
    pc = time.perf_counter_ns
    a, b, c, d = args
    # Grow the array before timing: a realloc (mremap) inside the loop would send TLB
    # shootdown IPIs to the CPUs running this process's other threads, and wait for them.
    start = len(out)
    out.frombytes(bytes(8 * n))
    for i in range(start, start + n):
        t0 = pc()
        f(a, b, c, d)
        t1 = pc()
        out[i] = t1 - t0


def _time_empty(n: int, out: array) -> None:
    """The timer's own cost, measured in the same loop shape as `_time_calls`."""
    pc = time.perf_counter_ns
    start = len(out)
    out.frombytes(bytes(8 * n))
    for i in range(start, start + n):
        t0 = pc()
        t1 = pc()
        out[i] = t1 - t0


def timer_overhead(n: int = 200_000) -> int:
    """Median cost of the two `perf_counter_ns` reads around a call, in ns."""
    out = array("q")
    _time_empty(n, out)
    return int(percentile(sorted(out), 50.0))


def _subtract_sorted(raw: array, overhead: int) -> array:
    return array("q", sorted(max(0, v - overhead) for v in raw))


def _throughput(
    f: Callable[..., Any], seconds: float, args: tuple = ARGS, chunk: int = 10_000
) -> tuple[float, int]:
    """Calls per second of `f(*args)` in a tight loop for about `seconds`; and the call count."""
    a, b, c, d = args
    done = 0
    t_end = time.perf_counter() + seconds
    t0 = time.perf_counter_ns()
    while True:
        for _ in range(chunk):
            f(a, b, c, d)
        done += chunk
        if time.perf_counter() >= t_end:
            break
    return done * 1e9 / (time.perf_counter_ns() - t0), done


def args_of(name: str) -> tuple:
    """The four integers a peer is called with (trades have their own)."""
    return TRADE_ARGS if name.endswith("_trade") else ARGS


# ------------------------------------------------------------------------------------ peers


class _Peers:
    """Opens every peer's sink under one scratch directory and closes them all."""

    def __init__(self, root: Path, with_direct: bool, with_logging: bool) -> None:
        from . import _native

        self.root = root
        self.with_direct = with_direct
        self.with_logging = with_logging
        self.native = _native.AuditLogger(root / "native")
        self.stalled = _native.AuditLogger(root / "native_stalled")
        self.noop = _native.noop_audit
        self.direct: Any = (
            _native.AuditLogger(root / "direct", engine="direct") if with_direct else None
        )
        self.listener: Optional[logging.handlers.QueueListener] = None
        self.std_logger: Optional[logging.Logger] = None
        self.fd = os.open(root / "os_write.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def start_threaded(self) -> None:
        """Opens the peers that run Python threads (the logging listener). They start only
        after the native peers were measured: a Python thread that wakes up takes the GIL
        from the measuring thread, which would charge the native calls for the peers'
        design."""
        if self.with_logging:
            q: queue.SimpleQueue = queue.SimpleQueue()
            self.file_handler = logging.FileHandler(self.root / "logging.log")
            self.file_handler.setFormatter(logging.Formatter("%(created).6f %(message)s"))
            self.listener = logging.handlers.QueueListener(q, self.file_handler)
            self.listener.start()
            lg = logging.getLogger("killswitch_audit.bench.peer")
            lg.propagate = False
            lg.handlers[:] = [logging.handlers.QueueHandler(q)]
            lg.setLevel(logging.INFO)
            self.std_logger = lg

    def logging_call(self) -> Callable[..., Any]:
        lg = self.std_logger
        assert lg is not None
        warning = lg.warning

        def call(reason: int, symbol: int, position: int, pnl: int) -> None:
            warning(
                "kill_switch reason=%d symbol=%d position=%d pnl=%d", reason, symbol, position, pnl
            )

        return call

    def os_write_call(self) -> Callable[..., Any]:
        from .format import RECORD_STRUCT

        pack = RECORD_STRUCT.pack
        write = os.write
        fd = self.fd
        mono = time.monotonic_ns
        wall = time.time_ns
        counter = iter(range(1 << 62))

        def call(reason: int, symbol: int, position: int, pnl: int) -> None:
            write(
                fd,
                pack(next(counter), wall(), mono(), 1, 2, reason, 0, position, pnl, 0, symbol, 0),
            )

        return call

    def close(self) -> None:
        for lg in (self.native, self.stalled):
            try:
                lg._set_paused(False)
                lg.close()
            except Exception:  # pragma: no cover - best effort at teardown
                log.exception("closing a native logger")
        if self.direct is not None:
            self.direct.close()
        if self.listener is not None:
            self.listener.stop()
            self.file_handler.close()
        os.close(self.fd)


def _fill_main_ring(logger: Any, at_least: int) -> int:
    """With the flusher paused, audits trades until the main ring holds `at_least` records
    (or is full); returns the ring's fill."""
    stats = logger.get_stats()
    cap = stats["main_ring_capacity"]
    if cap < at_least:
        raise ValueError(f"main ring of {cap} records cannot hold {at_least}")
    trade = logger.audit_trade
    # As many as there is room for, and a few more: the ring is full, the extra are dropped
    # (counted, GAP-recorded once the flusher resumes).
    for i in range(cap - stats["main_ring_len"] + 64):
        trade(7, 100, 10_125, i)
    return logger.get_stats()["main_ring_len"]


# --------------------------------------------------------------------------- persist latency

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
    from . import _native

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


# ----------------------------------------------------------- cold stop and idle engine

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
    from . import _native
    from .killswitch import KillSwitch, KillSwitchReason
    from .monitor import LatencyMonitor

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


# --------------------------------------------------------------------- durability probe


def durability_probe(directory: Path, rounds: int = 20, batch: int = 10_000) -> dict:
    """What durable kill switches (an fdatasync after each, on the syncer thread) cost the
    caller: `audit_kill_switch` and the empty call, interleaved, timed in one process with
    `durable_kill_switch` on and off. A call in a tight loop is a worst case (every kill
    switch asks for a sync; in production a halt is rare)."""
    from . import _native

    out: dict[str, Any] = {"directory": str(directory)}
    for durable in (True, False):
        d = Path(tempfile.mkdtemp(prefix="durable-" if durable else "lazy-", dir=directory))
        logger = _native.AuditLogger(d, durable_kill_switch=durable)
        noop_raw = array("q", bytes(8 * rounds * batch))
        ks_raw = array("q", bytes(8 * rounds * batch))
        try:
            logger.flush(1.0)
            for r in range(rounds):
                off = r * batch
                for fn, raw in ((_native.noop_audit, noop_raw), (logger.audit_kill_switch, ks_raw)):
                    pc = time.perf_counter_ns
                    for i in range(off, off + batch):
                        t0 = pc()
                        fn(1, 2, 3, 4)
                        raw[i] = pc() - t0
            syncs = logger.get_stats()["durable_syncs"]
        finally:
            logger.close()
            shutil.rmtree(d, ignore_errors=True)
        noop_raw = array("q", sorted(noop_raw))
        ks_raw = array("q", sorted(ks_raw))
        key = "durable" if durable else "not_durable"
        out[key] = {
            "syncs": syncs,
            "floor_p99_9_ns": percentile(noop_raw, 99.9),
            "floor_p99_97_ns": percentile(noop_raw, 99.97),
            "ks_p99_9_ns": percentile(ks_raw, 99.9),
            "ks_p99_97_ns": percentile(ks_raw, 99.97),
        }
    return out


# ------------------------------------------------------------------------ writeback probe


def _tlb_ipis(cpu: int) -> int:
    """TLB-shootdown interrupts received so far by `cpu` (/proc/interrupts, x86 Linux)."""
    with open("/proc/interrupts") as f:
        for line in f:
            parts = line.split()
            if parts and parts[0] == "TLB:":
                return int(parts[1 + cpu])
    return -1


def writeback_probe(directory: Path, rounds: int = 30, feed: int = 20_000) -> dict:
    """What the sink's writeback costs *other* code of the process: the empty PyO3 call is
    timed on this thread (pinned to one CPU) while a logger of the same process writes
    `feed` records per round to `directory` (600,000 in all by default: the kernel starts
    writing back only after some megabytes are dirty). Writeback of pages written through a shared
    mapping write-protects them again (page_mkclean), a TLB shootdown that interrupts every
    CPU running the process, this thread's included. Returns the floor's tail and the TLB
    IPIs this CPU received."""
    from . import _native

    cpu = sorted(os.sched_getaffinity(0))[0]
    old_affinity = os.sched_getaffinity(0)
    logger = _native.AuditLogger(directory)
    out = array("q")
    try:
        os.sched_setaffinity(0, {cpu})
        tlb0 = _tlb_ipis(cpu)
        for _ in range(rounds):
            for i in range(feed):
                logger.audit_trade(7, 100, 10_125, i)
            logger.flush(5.0)
            _time_calls(_native.noop_audit, 10_000, out)
        tlb1 = _tlb_ipis(cpu)
    finally:
        os.sched_setaffinity(0, old_affinity)
        logger.close()
    lat = sorted(out)
    return {
        "directory": str(directory),
        "records": rounds * feed,
        "tlb_ipis_on_caller_cpu": tlb1 - tlb0 if tlb0 >= 0 else None,
        "floor_p99_ns": percentile(lat, 99),
        "floor_p99_9_ns": percentile(lat, 99.9),
        "floor_p99_97_ns": percentile(lat, 99.97),
        "samples_over_2us": sum(1 for v in lat if v > 2_000),
        "samples": len(lat),
    }


def sink_drain_rate(directory: Path, records: int = (1 << 22) - 64) -> dict:
    """The whole sink end to end: a logger whose main ring (4 M slots) is filled while the
    flusher is paused, then resumed; records/s until `flush` returns (drain, CRC, mmap copy,
    chain, segment rolls and the preparation of the next segments included)."""
    from . import _native

    logger = _native.AuditLogger(directory, buffer_size=1 << 22)
    try:
        logger._set_paused(True)
        trade = logger.audit_trade
        for i in range(records):
            trade(7, 100, 10_125, i)
        before = logger.get_stats()["records_flushed"]
        t0 = time.perf_counter()
        logger._set_paused(False)
        done = logger.flush(60.0)
        elapsed = time.perf_counter() - t0
        stats = logger.get_stats()
    finally:
        logger._set_paused(False)
        logger.close()
    n = stats["records_flushed"] - before
    return {
        "records": n,
        "seconds": elapsed,
        "records_per_s": n / elapsed if done else float("nan"),
        "segments": stats["segments"],
    }


# ---------------------------------------------------------------------------------- memory


def _rss_kib() -> tuple[int, int]:
    """(RssAnon, RssFile) of this process in KiB (anonymous memory is what would grow)."""
    anon = file_ = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                anon = int(line.split()[1])
            elif line.startswith("RssFile:"):
                file_ = int(line.split()[1])
    return anon, file_


def memory_growth(root: Path, records: int) -> dict:
    """Anonymous memory of the process before and after `records` native audits."""
    from . import _native

    logger = _native.AuditLogger(root / "memory")
    try:
        trade = logger.audit_trade
        for i in range(100_000):
            trade(7, 100, 10_125, i)
        logger.flush(5.0)
        before = _rss_kib()
        dropped = 0
        left = records
        while left > 0:
            n = min(left, 100_000)
            for i in range(n):
                if trade(7, 100, 10_125, i) < 0:
                    dropped += 1
            left -= n
            logger.flush(5.0)  # chunks smaller than the ring: this measures memory, not drops
        logger.flush(10.0)
        after = _rss_kib()
        stats = logger.get_stats()
    finally:
        logger.close()
    return {
        "records": records,
        "dropped": dropped,
        "rss_anon_before_kib": before[0],
        "rss_anon_after_kib": after[0],
        "rss_anon_growth_kib": after[0] - before[0],
        "rss_file_after_kib": after[1],
        "segments": stats["segments"],
    }


# ------------------------------------------------------------------------------------ runner


@dataclass
class Report:
    peers: list[PeerResult]
    overhead_ns: int
    sizes: Sizes
    persist: Optional[dict] = None
    cold: Optional[dict] = None
    idle: Optional[dict] = None
    memory: Optional[dict] = None
    stalled_stats: Optional[dict] = None
    trade_tp_drops: int = 0
    trade_tp_drop_share: float = 0.0
    writeback: list = field(default_factory=list)
    durability: list = field(default_factory=list)
    sink: Optional[dict] = None
    wall_s: float = 0.0

    def get(self, name: str) -> Optional[PeerResult]:
        return next((p for p in self.peers if p.name == name), None)


def _throughputs(
    calls: dict[str, Callable[..., Any]],
    sizes: Sizes,
    root: Path,
    results: dict[str, PeerResult],
    progress: Callable[[str], None],
) -> dict:
    """Tight-loop throughput of the native-side peers. The trade loop gets its own logger
    with a large ring, so it measures the call, not the drop path; drops are counted all the
    same. Returns that logger's stats."""
    from . import _native

    tp_logger = _native.AuditLogger(root / "throughput", buffer_size=1 << 22)
    tp_calls = dict(calls)
    tp_calls["native_trade"] = tp_logger.audit_trade
    try:
        for name, f in tp_calls.items():
            syscall_peer = name in ("os_write", "direct_kill_switch", "direct_trade")
            secs = min(sizes.throughput_s, 0.5) if syscall_peer else sizes.throughput_s
            results[name].throughput, _ = _throughput(f, secs, args_of(name))
            progress(f"throughput {name}: {results[name].throughput / 1e6:.2f} M/s")
        tp_logger.flush(10.0)
        return tp_logger.get_stats()
    finally:
        tp_logger.close()


def run(
    sizes: Sizes,
    root: Path,
    *,
    with_direct: bool = True,
    with_logging: bool = True,
    with_persist: bool = True,
    with_cold: bool = True,
    with_memory: bool = True,
    with_writeback: bool = True,
    progress: Callable[[str], None] = lambda s: None,
) -> Report:
    t_start = time.perf_counter()
    peers = _Peers(root, with_direct, with_logging)
    results: dict[str, PeerResult] = {}
    what = {
        "floor": "empty PyO3 call, same 4 args (`_native.noop_audit`)",
        "native_kill_switch": "`AuditLogger.audit_kill_switch` (emergency ring)",
        "native_trade": "`AuditLogger.audit_trade` (main ring)",
        "native_kill_switch_stalled": "`audit_kill_switch`, main ring full, flusher stalled",
        "direct_kill_switch": "`audit_kill_switch` on the direct engine (pwrite in the call)",
        "direct_trade": "`audit_trade` on the direct engine (pwrite in the call)",
        "logging_queue": "stdlib `QueueHandler` -> `QueueListener` -> `FileHandler`",
        "os_write": "`os.write` of each packed 64-byte record",
    }
    calls: dict[str, Callable[..., Any]] = {
        "floor": peers.noop,
        "native_kill_switch": peers.native.audit_kill_switch,
        "native_trade": peers.native.audit_trade,
        "os_write": peers.os_write_call(),
    }
    if peers.direct is not None:
        calls["direct_kill_switch"] = peers.direct.audit_kill_switch
        calls["direct_trade"] = peers.direct.audit_trade
    threaded = ["logging_queue"] if with_logging else []
    order = [*calls, *threaded, "native_kill_switch_stalled"]
    for name in order:
        results[name] = PeerResult(name, what[name])

    def rounds(calls: dict[str, Callable[..., Any]], label: str) -> None:
        for name, f in calls.items():  # warm-up: first calls, page faults, caches
            _time_calls(f, 2_000, array("q"), args_of(name))
        for r in range(sizes.rounds):
            for name, f in calls.items():
                _time_calls(f, sizes.batch, results[name].samples, args_of(name))
            peers.native.flush(5.0)
            progress(f"{label} round {r + 1}/{sizes.rounds}")

    try:
        overhead = timer_overhead()
        progress(f"timer overhead {overhead} ns (median of two perf_counter_ns reads)")
        gc_was = gc.isenabled()
        gc.disable()
        try:
            rounds(calls, "latency")
            # Stalled: interleave an unloaded batch and a stalled batch on the same logger
            # kind, so the ratio compares like with like within one stretch of time.
            unloaded = PeerResult("native_kill_switch_unloaded", "")
            stalled = results["native_kill_switch_stalled"]
            st = peers.stalled
            max_fill = 0
            for r in range(sizes.stalled_rounds):
                _time_calls(st.audit_kill_switch, sizes.stalled_batch, unloaded.samples)
                st.flush(5.0)
                st._set_paused(True)
                max_fill = max(max_fill, _fill_main_ring(st, MAIN_FILL))
                _time_calls(st.audit_kill_switch, sizes.stalled_batch, stalled.samples)
                st._set_paused(False)
                st.flush(5.0)
                progress(f"stalled round {r + 1}/{sizes.stalled_rounds}")
            stats = st.get_stats()
            stats["max_main_ring_len_while_stalled"] = max_fill
            stalled.note = f"main ring held {max_fill} records while timed"
            tp = _throughputs(calls, sizes, root, results, progress)
            if threaded:
                peers.start_threaded()
                tcalls: dict[str, Callable[..., Any]] = {}
                if peers.std_logger is not None:
                    tcalls["logging_queue"] = peers.logging_call()
                rounds(tcalls, "Python-thread peers")
                for name, f in tcalls.items():
                    results[name].throughput, _ = _throughput(f, min(sizes.throughput_s, 0.5))
                    progress(f"throughput {name}: {results[name].throughput / 1e6:.2f} M/s")
        finally:
            if gc_was:
                gc.enable()

        for name in order:
            res = results[name]
            res.samples = _subtract_sorted(res.samples, overhead)
        unloaded.samples = _subtract_sorted(unloaded.samples, overhead)
        results[
            "native_kill_switch_stalled"
        ].note += (
            f"; unloaded on the same logger in the same rounds: p99.97 {unloaded.pct(99.97):.0f} ns"
        )
        stats["unloaded_p99_97_ns"] = unloaded.pct(99.97)
        stats["unloaded_p50_ns"] = unloaded.pct(50)
        trade_drops = tp["dropped_main"]
        # records_written counts what the rings accepted; drops never entered them
        trade_drop_share = trade_drops / max(1, tp["records_written"] + trade_drops)
        if trade_drops:
            accepted = tp["records_written"]
            results[
                "native_trade"
            ].note = f"throughput loop: {trade_drops} of {accepted + trade_drops} dropped"
    finally:
        peers.close()

    report = Report(
        peers=[results[n] for n in order],
        overhead_ns=overhead,
        sizes=sizes,
        stalled_stats=stats,
        trade_tp_drops=trade_drops,
        trade_tp_drop_share=trade_drop_share,
    )
    if with_persist:
        progress("persist latency (reader process)")
        report.persist = persist_latency(root, sizes.persist_samples)
    if with_cold:
        progress(f"cold stop: {sizes.cold_processes} fresh processes, 1 s idle, first stop")
        report.cold = cold_stop(root, sizes.cold_processes, 1.0)
        progress(f"idle CPU: 3 idle processes over {sizes.idle_cpu_s:g} s")
        report.idle = idle_cpu(root, 3, sizes.idle_cpu_s)
    progress("sink drain rate (a full 4 M-record main ring)")
    report.sink = sink_drain_rate(root / "sink")
    if with_writeback:
        progress("writeback probe (disk, then tmpfs)")
        targets = [root / "wb-disk"]
        if os.path.isdir("/dev/shm"):
            targets.append(Path(tempfile.mkdtemp(prefix="ksa-bench-wb-", dir="/dev/shm")))
        gc_was = gc.isenabled()
        gc.disable()
        try:
            for t in targets:
                report.writeback.append(writeback_probe(t, rounds=30))
            progress("durability probe (durable kill switches on and off, disk then tmpfs)")
            for t in targets:
                report.durability.append(durability_probe(t))
        finally:
            if gc_was:
                gc.enable()
            for t in targets[1:]:
                shutil.rmtree(t, ignore_errors=True)
    if with_memory:
        progress(f"memory over {sizes.memory_records:,} records")
        report.memory = memory_growth(root, sizes.memory_records)
    report.wall_s = time.perf_counter() - t_start
    return report


# ---------------------------------------------------------------------------------- output


def _fmt_ns(v: float) -> str:
    if v != v:  # NaN
        return "-"
    if v >= 1_000_000:
        return f"{v / 1e6:.1f} ms"
    if v >= 10_000:
        return f"{v / 1e3:.0f} µs"
    if v >= 1_000:
        return f"{v / 1e3:.2f} µs"
    return f"{v:.0f} ns"


def goals(rep: Report) -> list[tuple[str, str, str, bool]]:
    """(goal, target, measured, met) for the DESIGN.md numbers this run measures."""
    out: list[tuple[str, str, str, bool]] = []
    floor = rep.get("floor")
    ks = rep.get("native_kill_switch")
    st = rep.get("native_kill_switch_stalled")
    tr = rep.get("native_trade")
    if floor and ks:
        ratio = ks.pct(50) / max(floor.pct(50), 1.0)
        out.append(
            (
                "`audit_kill_switch` p50 vs empty PyO3 call",
                "<= 2x",
                f"{ratio:.2f}x ({_fmt_ns(ks.pct(50))} vs {_fmt_ns(floor.pct(50))})",
                ratio <= 2.0,
            )
        )
        v = ks.pct(99.97)
        out.append(("`audit_kill_switch` p99.97", "< 1 µs", _fmt_ns(v), v < 1000))
    if st and rep.stalled_stats:
        base = rep.stalled_stats["unloaded_p99_97_ns"]
        ratio = st.pct(99.97) / max(base, 1.0)
        out.append(
            (
                "p99.97, main ring full + sink stalled, vs unloaded",
                "<= 1.25x",
                f"{ratio:.2f}x ({_fmt_ns(st.pct(99.97))} vs {_fmt_ns(base)})",
                ratio <= 1.25,
            )
        )
    if tr and tr.throughput:
        # Records that reach the file: calls/s times the share not dropped by the ring.
        accepted = tr.throughput * (1.0 - rep.trade_tp_drop_share)
        out.append(
            (
                "one Python thread, `audit_trade` records/s into the file",
                ">= 5 M/s",
                f"{accepted / 1e6:.2f} M/s ({tr.throughput / 1e6:.2f} M calls/s, "
                f"{rep.trade_tp_drop_share:.0%} dropped)",
                accepted >= 5e6,
            )
        )
    if rep.sink:
        k = rep.sink
        out.append(
            (
                "sink drain, end to end (full 4 M main ring, segment rolls included)",
                ">= 20 M records/s",
                f"{k['records_per_s'] / 1e6:.2f} M/s ({k['records']:,} in {k['seconds']:.2f} s, "
                f"{k['segments']} segments)",
                k["records_per_s"] >= 20e6,
            )
        )
    if rep.persist:
        p = rep.persist
        out.append(
            (
                "kill-switch record visible to another process, p99",
                "< 200 µs",
                f"{_fmt_ns(p['p99_ns'])} (p50 {_fmt_ns(p['p50_ns'])}, {p['missing']} missing)",
                p["p99_ns"] < 200_000 and p["missing"] == 0,
            )
        )
    if rep.cold:
        c = rep.cold
        v = c["call_ns"]["p90_ns"]
        out.append(
            (
                f"first `emergency_stop` after 1 s idle, {c['processes']} fresh processes, p90",
                "<= 50 µs",
                f"{_fmt_ns(v)} (handlers done p90 {_fmt_ns(c['handlers_done_ns']['p90_ns'])}; "
                f"cold empty call p90 {_fmt_ns(c['empty_ns']['p90_ns'])})",
                v <= 50_000,
            )
        )
        v = c["block_ns"]["p90_ns"]
        out.append(("first stop: trigger -> gate closed, p90", "<= 5 µs", _fmt_ns(v), v <= 5_000))
    if rep.idle:
        v = rep.idle["max_share"]
        out.append(
            (
                "idle process (logger + monitor + kill switch), CPU",
                "< 1% of a core",
                f"{v:.2%} (worst of {rep.idle['processes']}, {rep.idle['seconds']:g} s)",
                v < 0.01,
            )
        )
    if rep.memory:
        m = rep.memory
        out.append(
            (
                f"anonymous memory growth over {m['records']:,} records",
                "none (fixed after start)",
                f"{m['rss_anon_growth_kib']:+d} KiB",
                m["rss_anon_growth_kib"] < 1024,
            )
        )
    return out


def markdown(rep: Report) -> str:
    floor = rep.get("floor")
    f50 = floor.pct(50) if floor else float("nan")
    f9997 = floor.pct(99.97) if floor else float("nan")
    lines = [
        f"Per call, {rep.sizes.rounds} rounds x {rep.sizes.batch:,} calls per peer "
        f"(stalled: {rep.sizes.stalled_rounds} x {rep.sizes.stalled_batch:,}); "
        f"timer overhead {rep.overhead_ns} ns subtracted; GC off while timing.",
        "",
        "| peer | p50 | p99 | p99.9 | p99.97 | max | calls/s (tight loop) "
        "| p50 / floor | p99.97 / floor |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in rep.peers:
        tp = f"{p.throughput / 1e6:.2f} M" if p.throughput else "-"
        cells = [_fmt_ns(p.pct(q)) for q in PERCENTILES]
        mx = _fmt_ns(float(p.samples[-1])) if len(p.samples) else "-"
        r50 = p.pct(50) / max(f50, 1.0)
        r9997 = p.pct(99.97) / max(f9997, 1.0)
        lines.append(
            f"| {p.name} | {' | '.join(cells)} | {mx} | {tp} | {r50:.2f}x | {r9997:.2f}x |"
        )
    lines.append("")
    for p in rep.peers:
        lines.append(f"- `{p.name}`: {p.what}{'; ' + p.note if p.note else ''}")
    lines += ["", "| goal (DESIGN.md) | target | measured | met |", "|---|---|---|---|"]
    for g, target, measured, met in goals(rep):
        lines.append(f"| {g} | {target} | {measured} | {'met' if met else '**missed**'} |")
    if rep.stalled_stats:
        s = rep.stalled_stats
        lines += [
            "",
            f"Stalled logger after the run: {s['dropped_main']:,} main-ring records dropped "
            f"(counted, GAP-recorded), {s['dropped_emergency']} kill-switch records dropped.",
        ]
    if rep.persist:
        p = rep.persist
        lines.append(
            f"Persist latency: {p['seen']} kill-switch records, p50 {_fmt_ns(p['p50_ns'])}, "
            f"p99 {_fmt_ns(p['p99_ns'])}, max {_fmt_ns(p['max_ns'])}; the flusher thread "
            f"waited {_fmt_ns(p['flusher_runqueue_wait_ns_per_wakeup'])} per wakeup for a CPU "
            "(run queue, /proc schedstat)."
        )
    if rep.writeback:
        lines += [
            "",
            "Writeback probe: the empty PyO3 call timed on a pinned thread while a logger of the "
            "same process writes to the directory (TLB-shootdown IPIs received by that CPU):",
            "",
            "| log directory | records written | TLB IPIs on caller's CPU | floor p99 | "
            "p99.9 | p99.97 | samples > 2 µs |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for w in rep.writeback:
            lines.append(
                f"| `{w['directory']}` | {w['records']:,} | {w['tlb_ipis_on_caller_cpu']} | "
                f"{_fmt_ns(w['floor_p99_ns'])} | {_fmt_ns(w['floor_p99_9_ns'])} | "
                f"{_fmt_ns(w['floor_p99_97_ns'])} | {w['samples_over_2us']:,} of "
                f"{w['samples']:,} |"
            )
        lines.append("")
    if rep.durability:
        lines += [
            "",
            "Durability probe: `audit_kill_switch` and the empty call, interleaved in one "
            "process, with `durable_kill_switch` on (an fdatasync after each kill switch, on "
            "the syncer thread) and off (timer included, ~50 ns):",
            "",
            "| log directory | durable | fdatasyncs | floor p99.9 | floor p99.97 | "
            "kill switch p99.9 | kill switch p99.97 |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for w in rep.durability:
            for key, label in (("durable", "yes"), ("not_durable", "no")):
                v = w[key]
                lines.append(
                    f"| `{w['directory']}` | {label} | {v['syncs']:,} | "
                    f"{_fmt_ns(v['floor_p99_9_ns'])} | {_fmt_ns(v['floor_p99_97_ns'])} | "
                    f"{_fmt_ns(v['ks_p99_9_ns'])} | {_fmt_ns(v['ks_p99_97_ns'])} |"
                )
        lines.append("")
    if rep.memory:
        m = rep.memory
        lines.append(
            f"Memory: RssAnon {m['rss_anon_before_kib']:,} -> {m['rss_anon_after_kib']:,} KiB over "
            f"{m['records']:,} records ({m['dropped']:,} dropped, {m['segments']} segments; "
            f"mapped segment pages, RssFile {m['rss_file_after_kib']:,} KiB, are the page cache)."
        )
    lines.append(f"Run took {rep.wall_s:.1f} s.")
    return "\n".join(lines) + "\n"


def plot(rep: Report, path: str) -> None:
    """Latency by percentile, log-log, one line per peer (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    qs = [50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.97, 99.99, 99.995]
    xs = [1.0 / (1.0 - q / 100.0) for q in qs]
    for p in rep.peers:
        if len(p.samples) == 0:
            continue
        ax.plot(xs, [max(p.pct(q), 1.0) for q in qs], marker="o", ms=3, label=p.name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"p{q:g}" for q in qs], rotation=45)
    ax.set_ylabel("latency per call (ns, timer overhead subtracted)")
    ax.set_title("killswitch-audit: per-call latency by percentile, same run")
    ax.axhline(1000, color="grey", lw=0.8, ls="--")
    ax.text(xs[0], 1100, "1 µs", color="grey", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def to_json(rep: Report) -> dict:
    out: dict[str, Any] = {
        "overhead_ns": rep.overhead_ns,
        "peers": {
            p.name: {
                **{f"p{q:g}": p.pct(q) for q in PERCENTILES},
                "max": float(p.samples[-1]) if len(p.samples) else None,
                "n": len(p.samples),
                "throughput": p.throughput,
            }
            for p in rep.peers
        },
        "goals": [{"goal": g, "target": t, "measured": m, "met": ok} for g, t, m, ok in goals(rep)],
        "stalled_stats": rep.stalled_stats,
        "memory": rep.memory,
        "writeback": rep.writeback,
        "durability": rep.durability,
        "sink": rep.sink,
    }
    if rep.persist:
        out["persist"] = {k: v for k, v in rep.persist.items() if k != "latencies"}
    out["cold"] = rep.cold
    out["idle"] = rep.idle
    return out


def bench_main(argv: Optional[list[str]] = None) -> int:
    """Entry point of `killswitch-audit bench` and `python -m killswitch_audit.bench`."""
    ap = argparse.ArgumentParser(
        prog="killswitch-audit bench",
        description="Per-call latency, throughput and persist latency of the audit call next to "
        "its peers (empty PyO3 call, direct engine, stdlib logging, os.write), in one run.",
    )
    ap.add_argument("--quick", action="store_true", help="small sizes: a run of seconds")
    ap.add_argument("--rounds", type=int, help="latency rounds (each peer gets one batch a round)")
    ap.add_argument("--batch", type=int, help="calls per peer per round")
    ap.add_argument("--persist-samples", type=int, help="kill-switch records for persist latency")
    ap.add_argument("--memory-records", type=int, help="records for the memory-growth check")
    ap.add_argument("--dir", help="scratch directory (default: a fresh temporary directory)")
    ap.add_argument("--no-direct", action="store_true", help="skip the direct engine's peers")
    ap.add_argument("--no-logging", action="store_true", help="skip the stdlib logging peer")
    ap.add_argument("--no-persist", action="store_true", help="skip the persist-latency test")
    ap.add_argument(
        "--no-cold", action="store_true", help="skip the cold first stop and idle CPU (processes)"
    )
    ap.add_argument("--no-memory", action="store_true", help="skip the memory-growth check")
    ap.add_argument(
        "--no-writeback", action="store_true", help="skip the writeback (TLB shootdown) probe"
    )
    ap.add_argument("--markdown", metavar="FILE", help="write the tables as Markdown")
    ap.add_argument("--json", metavar="FILE", help="write the numbers as JSON")
    ap.add_argument("--plot", metavar="FILE", help="write a percentile plot (needs matplotlib)")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)

    try:
        from . import _native  # noqa: F401
    except ImportError as e:
        print(
            f"killswitch-audit bench: the native extension is not available: {e}", file=sys.stderr
        )
        return 1

    base = QUICK if args.quick else FULL
    sizes = Sizes(**vars(base))
    for opt, attr in (
        ("rounds", "rounds"),
        ("batch", "batch"),
        ("persist_samples", "persist_samples"),
        ("memory_records", "memory_records"),
    ):
        v = getattr(args, opt)
        if v is not None:
            if v <= 0:
                print(
                    f"killswitch-audit bench: --{opt.replace('_', '-')} must be > 0",
                    file=sys.stderr,
                )
                return 2
            setattr(sizes, attr, v)
    if args.rounds is not None:
        sizes.stalled_rounds = args.rounds

    def progress(msg: str) -> None:
        if not args.quiet:
            print(f"  .. {msg}", file=sys.stderr, flush=True)

    tmp = None
    if args.dir:
        root = Path(args.dir)
        root.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix="ksa-bench-", dir=root))
    else:
        tmp = tempfile.mkdtemp(prefix="ksa-bench-")
        root = Path(tmp)
    try:
        rep = run(
            sizes,
            root,
            with_direct=not args.no_direct,
            with_logging=not args.no_logging,
            with_persist=not args.no_persist,
            with_cold=not args.no_cold,
            with_memory=not args.no_memory,
            with_writeback=not args.no_writeback,
            progress=progress,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = markdown(rep)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(rep), indent=2))
    if args.plot:
        try:
            plot(rep, args.plot)
        except ImportError:
            print(
                "killswitch-audit bench: --plot needs matplotlib (pip install matplotlib)",
                file=sys.stderr,
            )
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(bench_main(sys.argv[1:]))
