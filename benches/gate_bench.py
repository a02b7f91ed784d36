"""The order gate's cost per order, beside an empty PyO3 call measured in the same run.

    python benches/gate_bench.py [--calls 200000] [--rounds 15]

Rows (each a batch per round, rounds interleaved, per-call time = batch time / calls; the
percentiles are over rounds, so a preempted round shows in p90/max, not in p50):
- `empty PyO3 call`: `_native.noop_audit(3, 7, 100, -2500000)`, the floor of any call into Rust;
- `allows(scope)`, nothing restricted: the two-load fast path;
- `allows(scope)`, one account halted, order of another account: the snapshot walk;
- `allows(scope)`, the order's own account halted (denied, the denial counted);
- `allows(scope)` with the host-local control plane's table attached, nothing latched.
Prints a Markdown table with p50/p90/max ns per call and the p50 ratio to the empty call.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import tempfile
import time
from pathlib import Path

from killswitch_audit import AuditLogger, KillSwitch, KillSwitchReason, _native, default_config
from killswitch_audit.killswitch import Scope


def _batch(fn, arg, n: int) -> float:
    pc = time.perf_counter_ns
    t0 = pc()
    for _ in range(n):
        fn(arg, False)
    return (pc() - t0) / n


def _empty(n: int) -> float:
    noop = _native.noop_audit
    pc = time.perf_counter_ns
    t0 = pc()
    for _ in range(n):
        noop(3, 7, 100, -2500000)
    return (pc() - t0) / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=15)
    a = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="ksa-gate-"))
    env_control = os.environ.pop("KILLSWITCH_AUDIT_CONTROL", None)
    try:
        cfg = default_config()
        clear_lg = AuditLogger(base / "clear", segment_size_mb=1)
        clear = KillSwitch(clear_lg, latency_monitor=False, config=cfg, check_clock=False)
        halted_lg = AuditLogger(base / "halted", segment_size_mb=1)
        halted = KillSwitch(halted_lg, latency_monitor=False, config=cfg, check_clock=False)
        halted.emergency_stop(KillSwitchReason.MANUAL, scope=Scope(account="A"))
        from killswitch_audit.control import init_directory

        init_directory(base / "control")
        ctl_lg = AuditLogger(base / "ctl", segment_size_mb=1)
        ctl = KillSwitch(
            ctl_lg,
            latency_monitor=False,
            config=cfg,
            check_clock=False,
            join_control=str(base / "control"),
        )
        other, own = Scope(account="B", venue="X"), Scope(account="A", venue="X")
        rows = {
            "empty PyO3 call (noop_audit, 4 args)": lambda: _empty(a.calls),
            "allows(), nothing restricted": lambda: _batch(clear.allows, other, a.calls),
            "allows(), another account halted (allowed)": lambda: _batch(
                halted.allows, other, a.calls
            ),
            "allows(), own account halted (denied)": lambda: _batch(halted.allows, own, a.calls),
            "allows(), control table attached, nothing latched": lambda: _batch(
                ctl.allows, other, a.calls
            ),
        }
        assert clear.allows(other) and halted.allows(other) and not halted.allows(own)
        assert ctl.allows(other)
        samples: dict[str, list[float]] = {k: [] for k in rows}
        gc.disable()
        try:
            for _ in range(a.rounds):
                for name, fn in rows.items():
                    samples[name].append(fn())
        finally:
            gc.enable()
        floor = sorted(samples["empty PyO3 call (noop_audit, 4 args)"])[a.rounds // 2]
        print(f"load average at the end: {os.getloadavg()[0]:.1f} (2 cores)")
        print(f"{a.rounds} rounds x {a.calls} calls; ns per call over rounds\n")
        print("| call | p50 | p90 | max | p50 / empty call |")
        print("|---|---:|---:|---:|---:|")
        for name, v in samples.items():
            v.sort()
            p50, p90 = v[len(v) // 2], v[min(len(v) - 1, int(len(v) * 0.9))]
            print(f"| {name} | {p50:.1f} | {p90:.1f} | {v[-1]:.1f} | {p50 / floor:.2f}x |")
        for lg in (clear_lg, halted_lg, ctl_lg):
            lg.close()
    finally:
        if env_control is not None:
            os.environ["KILLSWITCH_AUDIT_CONTROL"] = env_control
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
