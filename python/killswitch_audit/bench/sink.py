"""What the sink costs and sustains: durable kill switches on and off (`durability_probe`),
writeback's TLB shootdowns felt by other code of the process (`writeback_probe`), the drain
rate of a full main ring end to end (`sink_drain_rate`), and anonymous memory growth over
many records (`memory_growth`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

from .timing import _time_calls, percentile

# --------------------------------------------------------------------- durability probe


def durability_probe(directory: Path, rounds: int = 20, batch: int = 10_000) -> dict:
    """What durable kill switches (an fdatasync after each, on the syncer thread) cost the
    caller: `audit_kill_switch` and the empty call, interleaved, timed in one process with
    `durable_kill_switch` on and off. A call in a tight loop is a worst case (every kill
    switch asks for a sync; in production a halt is rare)."""
    from .. import _native

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
    from .. import _native

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
    from .. import _native

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
    from .. import _native

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
