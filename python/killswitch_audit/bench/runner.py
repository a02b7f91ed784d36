"""One benchmark run: the sizes (`QUICK`, `FULL`), the `Report` it fills, and `run`, which
times the peers in interleaved rounds (the stalled scenario beside an unloaded batch on the
same logger), their tight-loop throughput, then the persist, cold-stop, idle, sink,
writeback, durability and memory measurements.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .peers import _fill_main_ring, _Peers
from .persist import persist_latency
from .sink import durability_probe, memory_growth, sink_drain_rate, writeback_probe
from .stop import cold_stop, idle_cpu
from .timing import (
    PeerResult,
    _subtract_sorted,
    _throughput,
    _time_calls,
    args_of,
    timer_overhead,
)

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
    from .. import _native

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
