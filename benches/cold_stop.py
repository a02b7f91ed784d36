"""The kill path as it fires: the first `emergency_stop` of fresh processes after quiet, and
what an idle engine costs (issue 13).

    python benches/cold_stop.py [--processes 30] [--idle 1] [--skip-idle-cpu] [--json FILE]
    python benches/cold_stop.py --idle 60        # the long-quiet mode (minutes; never in CI)

Prints, each with p50/p90/p99/max:
- the first stop of N fresh processes (logger + latency monitor + kill switch with one no-op
  stop handler) after `--idle` seconds: total call time, trigger -> handlers done, trigger ->
  gate closed, and a cold empty PyO3 call in the same processes (after 1 s more of quiet);
- idle CPU per process (utime+stime from /proc/PID/stat, and the threads' schedstat) over
  10 s, with the default `backoff` idle strategy and with `busy_poll`;
- idle persist latency: a kill-switch record visible in the file to another process after
  0.2 s and 1 s of quiet;
- the warm-loop `emergency_stop` percentiles (p99.97).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from killswitch_audit.bench import cold_stop, idle_cpu, idle_persist, warm_stop_loop


def _us(v: float) -> str:
    return f"{v / 1e3:.1f} µs" if v < 1e6 else f"{v / 1e6:.2f} ms"


def _row(name: str, d: dict) -> str:
    return (
        f"| {name} | {_us(d['p50_ns'])} | {_us(d['p90_ns'])} | {_us(d['p99_ns'])} "
        f"| {_us(d['max_ns'])} |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", type=int, default=30, help="fresh processes (default 30)")
    ap.add_argument("--idle", type=float, default=1.0, help="quiet before the stop, s")
    ap.add_argument("--stagger", type=float, default=0.25, help="s between two processes' stops")
    ap.add_argument("--idle-seconds", type=float, default=10.0, help="idle CPU window, s")
    ap.add_argument("--persist-samples", type=int, default=30, help="records per quiet period")
    ap.add_argument("--warm", type=int, default=20_000, help="warm-loop stops")
    ap.add_argument("--skip-idle-cpu", action="store_true")
    ap.add_argument("--skip-persist", action="store_true")
    ap.add_argument("--skip-warm", action="store_true")
    ap.add_argument("--json", metavar="FILE", help="write the numbers as JSON")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="ksa-cold-"))
    out: dict = {}
    say = lambda s: print(f"  .. {s}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        c = cold_stop(root, args.processes, args.idle, args.stagger, progress=say)
        out["cold_stop"] = c
        print(f"\nfirst emergency_stop after {args.idle:g} s idle, {c['processes']} processes")
        print("| what | p50 | p90 | p99 | max |\n|---|---:|---:|---:|---:|")
        print(_row("call, total", c["call_ns"]))
        print(_row("trigger -> handlers done", c["handlers_done_ns"]))
        print(_row("trigger -> gate closed", c["block_ns"]))
        print(_row("cold empty PyO3 call (peer)", c["empty_ns"]))
        print(_row("first record of a new monitor operation", c["new_op_record_ns"]))
        pf = c["page_faults"]
        print(
            f"minor page faults during the first stop: p50 {pf['p50_ns']:.0f}, "
            f"p90 {pf['p90_ns']:.0f}, max {pf['max_ns']:.0f}"
        )
        if not args.skip_idle_cpu:
            print("\nidle CPU per process (share of one core)")
            for strategy in ("backoff", "busy_poll"):
                say(f"idle CPU, {strategy}, {args.idle_seconds:g} s")
                n = 3 if strategy == "backoff" else 1
                r = idle_cpu(root, n, args.idle_seconds, strategy)
                out[f"idle_cpu_{strategy}"] = r
                stat = ", ".join(f"{v:.2%}" for v in r["stat_share"])
                sched = ", ".join(f"{v:.2%}" for v in r["schedstat_share"])
                print(f"- {strategy}: /proc stat {stat}; schedstat {sched}")
        if not args.skip_persist:
            print("\nkill-switch record visible to another process after quiet")
            print(
                "| quiet | idle strategy | p50 | p90 | p99 | max | missing |\n"
                "|---|---|---:|---:|---:|---:|---:|"
            )
            for quiet in (0.2, 1.0):
                # busy_poll (the engine before back-off) is the peer, in the same stretch.
                for strategy in ("backoff", "busy_poll"):
                    say(f"idle persist, {quiet:g} s quiet, {strategy}, {args.persist_samples}")
                    r = idle_persist(root, args.persist_samples, quiet, strategy)
                    out[f"idle_persist_{quiet:g}s_{strategy}"] = r
                    print(
                        f"| {quiet:g} s | {strategy} | {_us(r['p50_ns'])} | {_us(r['p90_ns'])} "
                        f"| {_us(r['p99_ns'])} | {_us(r['max_ns'])} | {r['missing']} |"
                    )
        if not args.skip_warm:
            say(f"warm loop, {args.warm} stops")
            w = warm_stop_loop(root, args.warm)
            out["warm_loop"] = w
            print(
                f"\nwarm-loop emergency_stop ({w['n']} stops): p50 {_us(w['p50_ns'])}, "
                f"p99 {_us(w['p99_ns'])}, p99.9 {_us(w['p99.9_ns'])}, "
                f"p99.97 {_us(w['p99.97_ns'])}"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
