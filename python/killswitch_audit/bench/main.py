"""`bench_main`: the arguments of `killswitch-audit bench` (and `python -m
killswitch_audit.bench`), the sizes they choose, the scratch directory, and where the report
goes (stdout, `--markdown`, `--json`, `--plot`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional

from .output import markdown, plot, to_json
from .runner import FULL, QUICK, Sizes, run


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
        from .. import _native  # noqa: F401
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
