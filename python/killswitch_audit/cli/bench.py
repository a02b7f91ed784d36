"""Benchmark code of the command line: `killswitch-audit bench` (delegated to
`killswitch_audit.bench`) and the demo's measured side (emergency stops and kill-switch audit
calls on a scratch log, the order gate against an empty PyO3 call).
"""

from __future__ import annotations

import argparse
import time
from array import array
from pathlib import Path
from typing import Any, TextIO

from .common import EXIT_USAGE, _err


def cmd_bench(argv: list[str]) -> int:
    try:
        from ..bench import bench_main  # type: ignore[import-not-found]
    except Exception as e:
        _err("bench", f"benchmarks are not available ({type(e).__name__}: {e})")
        return EXIT_USAGE
    return int(bench_main(argv) or 0)


def _stop_bench(cfg: Any, directory: Path, args: argparse.Namespace):
    from .. import open_audit_logger
    from ..killswitch import KillSwitch

    n = args.stop_samples
    perf = time.perf_counter_ns
    lg = open_audit_logger(cfg, directory=directory)
    stop_lat = array("q")
    block_lat = array("q")
    audit_lat = array("q")
    try:
        ks = KillSwitch(lg, latency_monitor=False, config=cfg, triggers=[], restore=False)
        for _ in range(3):
            ks.add_stop_handler(lambda: None)
        stop = ks.emergency_stop
        for i in range(n):
            _unlatch_for_benchmark(ks)  # so that every sample flips the gate (not timed)
            t0 = perf()
            rep = stop("DAILY_LOSS_LIMIT", 1, 100, -5, None, 0)
            stop_lat.append(perf() - t0)
            block_lat.append(rep.trigger_to_block_ns)
            if i % 400 == 399:
                lg.flush(2.0)  # keep the emergency ring from filling (not timed)
        audit = lg.audit_kill_switch
        for i in range(n):
            t0 = perf()
            audit(1, 1, 100, -5)
            audit_lat.append(perf() - t0)
            if i % 4000 == 3999:
                lg.flush(2.0)
    finally:
        lg.close()
    return sorted(stop_lat), sorted(block_lat), sorted(audit_lat)


def _gate_vs_noop(cfg: Any, directory: Path, out: TextIO) -> None:
    """The order gate next to an empty PyO3 call with four int arguments, in loops (no timer
    per call), interleaved rounds, best of each: the ratio DESIGN.md sets a goal for. The
    switches it halts write to a scratch log in `directory`."""
    try:
        from .._native import noop_audit
    except ImportError:
        return
    from .. import open_audit_logger

    logger = open_audit_logger(cfg, directory=directory)
    try:
        _gate_rounds(cfg, logger, noop_audit, out)
    finally:
        logger.close()


def _gate_rounds(cfg: Any, logger: Any, noop_audit: Any, out: TextIO) -> None:
    import gc

    from ..killswitch import KillSwitch, Scope

    order = Scope("DEMO", "momentum", 1, "SIM")

    def switch(action: Any) -> Any:
        ks = KillSwitch(logger, latency_monitor=False, config=cfg, triggers=[], restore=False)
        action(ks)
        return ks.allows

    cases = {
        "empty PyO3 call noop_audit(1, 2, 3, 4)": (noop_audit, (1, 2, 3, 4)),
        "allows(): nothing halted": (switch(lambda ks: None), (order, False)),
        "allows(): another scope halted": (
            switch(lambda ks: ks.emergency_stop("manual", scope=Scope(strategy="other"))),
            (order, False),
        ),
        "allows(): REDUCING, reducing order": (
            switch(lambda ks: ks.reduce_only("manual", scope=Scope(strategy="momentum"))),
            (order, True),
        ),
        "allows(): HALTED, denied and counted": (
            switch(lambda ks: ks.emergency_stop("manual", scope=Scope(strategy="momentum"))),
            (order, False),
        ),
    }
    n = 20_000
    perf = time.perf_counter_ns

    def empty() -> float:
        t0 = perf()
        for _ in range(n):
            pass
        return (perf() - t0) / n

    def loop(fn: Any, a: tuple) -> float:
        t0 = perf()
        for _ in range(n):
            fn(*a)
        return (perf() - t0) / n

    best = dict.fromkeys(cases, float("inf"))
    base = float("inf")
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(15):
            base = min(base, empty())
            for name, (fn, a) in cases.items():
                best[name] = min(best[name], loop(fn, a))
    finally:
        if gc_was:
            gc.enable()
    ref = max(best["empty PyO3 call noop_audit(1, 2, 3, 4)"] - base, 1e-9)
    out.write(
        f"\norder gate vs an empty PyO3 call (loops of {n:,}, best of 15 rounds, loop "
        f"overhead {base:.1f} ns subtracted):\n"
    )
    w = max(len(k) for k in cases)
    for name in cases:
        net = best[name] - base
        out.write(f"  {name:<{w}}  {net:7.1f} ns  {net / ref:5.2f}x\n")


def _unlatch_for_benchmark(ks: Any) -> None:
    """Benchmark only, on a scratch log: forget the halt without a reset, so that the next
    `emergency_stop` measures a real gate flip rather than a re-trigger of a halted switch."""
    ks._core.restore([])


def add_parser(sub: Any) -> None:
    """Registers bench (whose arguments `bench_main` parses)."""
    sub.add_parser("bench", help="benchmarks against the peers", add_help=False)
