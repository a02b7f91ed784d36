"""`killswitch-audit dump | verify | stats | report`: reading what a logger wrote.

`dump` prints records (or follows a live log), `verify` checks a log and exits 0 only when it
is clean, `stats` reads a logger's live counters (stats.bin), `report` hands an HdrHistogram
interval log to `killswitch_audit.report`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from typing import Any, Optional

from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError, _err, _iso

# --------------------------------------------------------------------------------------------
# record rendering


def _kind_name(kind: Any) -> str:
    return getattr(kind, "name", str(kind))


def _record_dict(r: Any) -> dict[str, Any]:
    d = r.to_dict()
    d["time"] = _iso(r.wall_ns)
    d["system"] = r.is_system
    d["emergency"] = r.is_emergency
    d["text"] = r.text or ""
    return d


def _parse_kinds(values: Optional[list[str]]) -> Optional[list[int]]:
    if not values:
        return None
    from ..format import RecordKind

    out = []
    for raw in values:
        for v in raw.split(","):
            v = v.strip()
            if not v:
                continue
            if v.isdigit():
                out.append(int(v))
                continue
            try:
                out.append(int(RecordKind[v.upper()]))
            except KeyError:
                names = ", ".join(k.name for k in RecordKind)
                raise CliError(f"unknown record kind {v!r} (one of {names})", EXIT_USAGE) from None
    return out


def _check_path(path: str) -> None:
    if not os.path.exists(path):
        raise CliError(f"no such file or directory: {path}", EXIT_USAGE)


# --------------------------------------------------------------------------------------------
# dump


def cmd_dump(args: argparse.Namespace) -> int:
    """Reads the whole log first (so a damaged log prints only the one-line error, no
    header), then streams the lines the core renders."""
    from .. import _native  # type: ignore[attr-defined]

    _check_path(args.path)
    kinds = _parse_kinds(args.kind)
    fmt = {"table": "text", "jsonl": "json"}.get(args.format, args.format)
    if args.follow:
        return _follow(args.path, kinds, "raw-json" if fmt == "json" else "raw", args.interval)
    out = sys.stdout
    if fmt == "csv":
        from ..reader import read_audit_log

        rows = read_audit_log(args.path, kinds=kinds, salvage=args.salvage)
        w: Optional[csv.DictWriter] = None
        for n, r in enumerate(rows):
            if args.limit is not None and n >= args.limit:
                break
            d = _record_dict(r)
            if w is None:
                w = csv.DictWriter(out, fieldnames=list(d), lineterminator="\n")
                w.writeheader()
            w.writerow(d)
        return EXIT_OK
    style = (
        ("raw" if args.raw else "text") if fmt == "text" else ("raw-json" if args.raw else "json")
    )
    dump = _native.Dump(args.path, style, kinds, args.salvage)
    if dump.header:
        out.write(dump.header + "\n")
    out.flush()
    raw = getattr(out, "buffer", None)  # bytes straight to the binary stdout when there is one
    left = args.limit if args.limit is not None else -1
    while left != 0:
        step = 65536 if left < 0 else min(left, 65536)
        chunk = dump.render(step)
        if not chunk:
            break
        if raw is not None:
            raw.write(chunk)
        else:
            out.write(chunk.decode("utf-8"))
        left = left - step if left > 0 else left
    if raw is not None:
        raw.flush()
    if dump.damage is not None:
        out.flush()
        _err("dump", f"records marked SALVAGED come after damage: {dump.damage}")
        return EXIT_FAILED
    return EXIT_OK


def _follow(path: str, kinds: Optional[list[int]], style: str, interval: float) -> int:
    """Prints records as they are committed (Ctrl-C to stop), in file order: re-scans the
    segments every `interval` seconds and prints what each one gained since the last pass."""
    from .. import _native  # type: ignore[attr-defined]
    from ..reader import list_segments

    done: dict[str, int] = {}
    out = sys.stdout
    try:
        while True:
            for _idx, seg in list_segments(path):
                d = _native.scan_segment_file(seg)
                start, n = done.get(seg, 0), d["n_valid"]
                if n > start:
                    out.write(_native.render_records(d["data"][start * 64 : n * 64], style, kinds))
                done[seg] = max(start, n)
                if d["damage"] is not None:
                    from ..errors import AuditLogCorrupt

                    off, why = d["damage"]
                    raise AuditLogCorrupt(why, path=seg, offset=off)
            out.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        return EXIT_OK


# --------------------------------------------------------------------------------------------
# verify


def cmd_verify(args: argparse.Namespace) -> int:
    from ..reader import verify_audit_log

    _check_path(args.path)
    key = None
    if args.key_hex is not None:
        try:
            key = bytes.fromhex(args.key_hex.strip())
        except ValueError:
            raise CliError("--key-hex must be hex digits", EXIT_USAGE) from None
        if not key:
            raise CliError("--key-hex must not be empty", EXIT_USAGE)
    rep = verify_audit_log(args.path, key=key)
    anc = None
    if getattr(args, "anchor", None):  # issue 14 point 7: control/anchor.py
        from ..control.anchor import verify_anchor

        anc = verify_anchor(args.path, args.anchor)
    if args.json:
        d = rep.to_dict()
        if anc is not None:
            d["anchor"] = {**vars(anc), "ok": anc.ok}
        sys.stdout.write(json.dumps(d, indent=2, default=str) + "\n")
    else:
        sys.stdout.write("\n".join(rep.lines()) + "\n")
        if anc is not None:
            sys.stdout.write(
                f"anchor {anc.log_id}: {anc.segments_anchored} sealed segment(s), "
                f"{anc.records_anchored} kill-switch record(s) anchored off-host; "
                + ("all present\n" if anc.ok else "PROBLEMS:\n")
                + "".join(f"  {p}\n" for p in anc.problems)
            )
    return EXIT_OK if rep.ok and (anc is None or anc.ok) else EXIT_FAILED


# --------------------------------------------------------------------------------------------
# stats


def _pid_alive(pid: int) -> Optional[bool]:
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return None
    return True


def cmd_stats(args: argparse.Namespace) -> int:
    from ..reader import read_stats

    _check_path(args.dir)
    p = os.path.join(args.dir, "stats.bin") if os.path.isdir(args.dir) else args.dir
    if not os.path.exists(p):
        raise CliError(f"{args.dir}: no stats.bin (not an audit directory, or never opened)")
    s: dict[str, Any] = dict(read_stats(p))
    now = time.time_ns()
    s["age_s"] = round((now - s["updated_wall_ns"]) / 1e9, 3) if s["updated_wall_ns"] else None
    s["writer_alive"] = _pid_alive(s["pid"])
    for ring in ("main", "emergency"):
        cap = s[f"{ring}_ring_capacity"]
        s[f"{ring}_ring_fill"] = round(s[f"{ring}_ring_len"] / cap, 6) if cap else 0.0
    if args.json:
        sys.stdout.write(json.dumps(s, indent=2) + "\n")
        return EXIT_OK
    alive = {True: "running", False: "not running", None: "unknown"}[s["writer_alive"]]
    sys.stdout.write(f"stats of {p}\n")
    sys.stdout.write(f"  writer pid {s['pid']} ({alive})")
    if s["updated_wall_ns"]:
        sys.stdout.write(f", updated {_iso(s['updated_wall_ns'])} ({s['age_s']} s ago)")
    sys.stdout.write("\n")
    width = max(len(k) for k in s)
    for k, v in s.items():
        if k in ("pid", "updated_wall_ns", "age_s", "writer_alive"):
            continue
        shown = f"{v:.2%}" if k.endswith("_fill") else (f"{v:,}" if isinstance(v, int) else v)
        sys.stdout.write(f"  {k:<{width}}  {shown:>20}\n")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------
# report (delegated)


def cmd_report(argv: list[str]) -> int:
    from ..report import report_main

    return int(report_main(argv) or 0)


# --------------------------------------------------------------------------------------------
# arguments


def add_parsers(sub: Any) -> None:
    """Registers dump, verify, stats and report (whose arguments `report_main` parses)."""
    u = sub.add_parser(
        "dump",
        help="print the records of a log directory or segment file",
        description="Prints records in seq order, each TEXT joined onto the record it is "
        "attached to, fields named by kind; --raw prints stored records in file order.",
    )
    u.add_argument("path", help="log directory or one .seg file")
    u.add_argument(
        "--format",
        choices=("text", "json", "csv", "table", "jsonl"),
        default="text",
        help="text (default: seq order, texts joined, fields named), json (one object per "
        "line), csv (raw fields); table and jsonl are older names of text and json",
    )
    u.add_argument(
        "--raw",
        action="store_true",
        help="one row per stored record in file order (TEXT chunks too), generic columns",
    )
    u.add_argument(
        "--salvage",
        action="store_true",
        help="go on after damage: print the intact records after it, marked SALVAGED (exit 1)",
    )
    u.add_argument(
        "--kind",
        nargs="+",
        metavar="KIND",
        help="only these kinds (names or numbers, e.g. KILL_SWITCH)",
    )
    u.add_argument(
        "--follow", "-f", action="store_true", help="keep printing new records (Ctrl-C stops)"
    )
    u.add_argument("--interval", type=float, default=0.2, help=argparse.SUPPRESS)
    u.add_argument("--limit", type=int, help="stop after this many records")
    u.set_defaults(func=cmd_dump)

    v = sub.add_parser(
        "verify",
        help="check CRCs, sequence accounting, torn tails and the hash chain",
        description="Exit 0 only when the log is clean; 1 when a problem is found.",
    )
    v.add_argument("path", help="log directory or one .seg file")
    v.add_argument(
        "--key-hex",
        metavar="HEX",
        help="HMAC key of a keyed log (default: $KILLSWITCH_AUDIT_HMAC_KEY)",
    )
    v.add_argument("--json", action="store_true", help="the full report as JSON")
    v.add_argument(
        "--anchor",
        metavar="URL",
        help="nats:// URL: also compare with the chain heads and kill-switch records this log "
        "anchored off-host (catches deleted newest segments; docs/CONTROL.md)",
    )
    v.set_defaults(func=cmd_verify)

    s = sub.add_parser(
        "stats",
        help="live counters of a (running) logger, from its stats.bin",
        description="Reads DIR/stats.bin, which the flusher rewrites on every pass.",
    )
    s.add_argument("dir", help="log directory (or a stats.bin file)")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_stats)

    sub.add_parser(
        "report",
        help="percentile table (and --plot chart) of an HdrHistogram interval log",
        add_help=False,
    )
