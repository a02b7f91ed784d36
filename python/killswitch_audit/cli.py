"""`killswitch-audit`: the command line (console script and `python -m killswitch_audit`).

    killswitch-audit demo [--dir DIR] [--rate N] [--seconds S]   the README's main job
    killswitch-audit dump PATH [--format jsonl|csv|table] [--kind K ...] [--follow]
    killswitch-audit verify PATH [--key-hex HEX] [--json]        exit 0 only when clean
    killswitch-audit stats DIR [--json]                          live counters (stats.bin)
    killswitch-audit report FILE.hlog [--plot OUT.png]           latency percentiles
    killswitch-audit bench ...                                   benchmarks (bench.py)

Exit codes: 0 ok, 1 a check failed (or the log cannot be read), 2 usage. Errors are one line
on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from array import array
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, TextIO

PROG = "killswitch-audit"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class CliError(Exception):
    """A one-line error for stderr, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


def _err(cmd: str, message: str) -> None:
    sys.stderr.write(f"{PROG} {cmd}: error: {message}\n")


# --------------------------------------------------------------------------------------------
# record rendering


def _iso(wall_ns: int) -> str:
    s, ns = divmod(wall_ns, 1_000_000_000)
    try:
        t = datetime.fromtimestamp(s, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return str(wall_ns)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns // 1000:06d}Z"


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
    from .format import RecordKind

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
    from . import _native  # type: ignore[attr-defined]

    _check_path(args.path)
    kinds = _parse_kinds(args.kind)
    fmt = {"table": "text", "jsonl": "json"}.get(args.format, args.format)
    if args.follow:
        return _follow(args.path, kinds, "raw-json" if fmt == "json" else "raw", args.interval)
    out = sys.stdout
    if fmt == "csv":
        from .reader import read_audit_log

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
    from . import _native  # type: ignore[attr-defined]
    from .reader import list_segments

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
                    from .errors import AuditLogCorrupt

                    off, why = d["damage"]
                    raise AuditLogCorrupt(why, path=seg, offset=off)
            out.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        return EXIT_OK


# --------------------------------------------------------------------------------------------
# verify


def cmd_verify(args: argparse.Namespace) -> int:
    from .reader import verify_audit_log

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
        from .control.anchor import verify_anchor

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
    from .reader import read_stats

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
# report, bench (delegated)


def cmd_report(argv: list[str]) -> int:
    from .report import report_main

    return int(report_main(argv) or 0)


def cmd_bench(argv: list[str]) -> int:
    try:
        from .bench import bench_main  # type: ignore[import-not-found]
    except Exception as e:
        _err("bench", f"benchmarks are not available ({type(e).__name__}: {e})")
        return EXIT_USAGE
    return int(bench_main(argv) or 0)


# --------------------------------------------------------------------------------------------
# demo


DEMO_PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.97)


def _pct(sorted_ns: Sequence[int], p: float) -> int:
    if not sorted_ns:
        return 0
    i = min(len(sorted_ns) - 1, max(0, round(p / 100.0 * len(sorted_ns) + 0.5) - 1))
    return sorted_ns[i]


class _SortedSamples:
    """Exact percentiles of sorted ns samples, shaped like a histogram for
    `report.distribution` (the chart's percentile ticks)."""

    def __init__(self, sorted_ns: Sequence[int]):
        self.s = sorted_ns
        self.total = len(sorted_ns)

    def value_at_percentile(self, p: float) -> int:
        return _pct(self.s, p)

    def max(self) -> int:
        return self.s[-1] if self.s else 0


class _Progress:
    def __init__(self, total_s: float, out: TextIO, enabled: bool):
        self.total = total_s
        self.out = out
        self.tty = enabled and out.isatty()
        self.enabled = enabled
        self.next_plain = 0.0

    def update(self, elapsed: float, text: str) -> None:
        if not self.enabled:
            return
        frac = min(1.0, elapsed / self.total) if self.total > 0 else 1.0
        if self.tty:
            bar = "#" * int(frac * 30)
            self.out.write(f"\r  [{bar:<30}] {frac:4.0%} {elapsed:5.1f}s  {text}   ")
            self.out.flush()
        elif elapsed >= self.next_plain:
            self.out.write(f"  {frac:4.0%} {elapsed:5.1f}s  {text}\n")
            self.next_plain += max(self.total / 5.0, 0.5)

    def done(self) -> None:
        if self.enabled and self.tty:
            self.out.write("\n")


class DemoOrchestrator:
    """A simulated orchestrator: it sends orders through the kill switch's gate, audits its
    trades, feeds its P&L to the switch, and registers its stop handlers (the seed's
    `stop_live_trading`, plus order cancellation and flattening)."""

    def __init__(self, kill_switch: Any, logger: Any, scope: Any):
        self.ks = kill_switch
        self.logger = logger
        self.scope = scope
        self.live = True
        self.open_orders: dict[int, int] = {}
        self.cancelled = 0
        self.flattened = False
        self.stop_time_ns = 0
        kill_switch.add_stop_handler(self.cancel_all_orders)
        kill_switch.add_stop_handler(self.stop_live_trading)
        kill_switch.add_stop_handler(self.flatten_positions)

    def cancel_all_orders(self) -> None:
        self.cancelled += len(self.open_orders)
        self.open_orders.clear()

    def stop_live_trading(self) -> None:
        self.live = False
        self.stop_time_ns = time.perf_counter_ns()

    def flatten_positions(self) -> None:
        self.flattened = True


def _lat_table(rows: list[tuple[str, Sequence[int]]], out: TextIO) -> None:
    cols = [f"p{p:g}" for p in DEMO_PERCENTILES] + ["max"]
    w = max(len(n) for n, _ in rows)
    out.write(f"  {'operation':<{w}} {'count':>9} " + " ".join(f"{c:>9}" for c in cols) + "\n")
    out.write(f"  {'':<{w}} {'':>9} " + " ".join(f"{'(us)':>9}" for _ in cols) + "\n")
    for name, s in rows:
        vals = [_pct(s, p) for p in DEMO_PERCENTILES] + [s[-1] if s else 0]
        out.write(
            f"  {name:<{w}} {len(s):>9,} " + " ".join(f"{v / 1e3:>9.3f}" for v in vals) + "\n"
        )


def cmd_demo(args: argparse.Namespace) -> int:
    from . import open_audit_logger
    from .config import load_config
    from .format import RecordKind
    from .killswitch import KillSwitch, LossLimit, Scope
    from .reader import read_audit_log, verify_audit_log

    out = sys.stdout
    if args.rate <= 0 or args.seconds <= 0:
        raise CliError("--rate and --seconds must be positive", EXIT_USAGE)
    cfg = load_config(args.config)
    if args.dir:
        directory = Path(args.dir)
        directory.mkdir(parents=True, exist_ok=True)
        if any(directory.glob("*.seg")) or any(directory.glob("audit/*.seg")):
            raise CliError(
                f"{directory} already holds an audit log; give an empty --dir", EXIT_USAGE
            )
    else:
        directory = Path(tempfile.mkdtemp(prefix="killswitch-audit-demo-"))
    log_dir = directory / "audit"
    if args.engine:
        cfg = _with_engine(cfg, args.engine)
    rng = random.Random(args.seed)
    limit = cfg.kill_switch.triggers.daily_loss_limit_cents or args.loss_limit
    out.write(f"{PROG} demo: audit log in {log_dir}\n")
    out.write(
        f"  {args.rate:,} trades/s for {args.seconds:g} s, daily loss limit "
        f"{limit / 100:,.2f}, engine {cfg.audit_system.engine}\n"
    )

    logger = open_audit_logger(cfg, directory=log_dir)
    # alerts (clock, latency breaches) would interleave with the progress bar: the demo prints
    # the clock evidence itself and the latency report at the end
    alerts = logging.getLogger("killswitch_audit.alerts")
    alerts_level = alerts.level
    alerts.setLevel(logging.ERROR)
    try:
        ks = KillSwitch(logger, latency_monitor=False, config=cfg, triggers=[])
        if not any(isinstance(t, LossLimit) for t in ks.triggers):
            ks.add_trigger(LossLimit(limit))
        out.write(f"  clock: {ks.clock['message']}\n")
        desk = Scope(account="DEMO", strategy="momentum", symbol_id=1, venue="SIM")
        orch = DemoOrchestrator(ks, logger, desk)
        symbols = [
            Scope(account="DEMO", strategy="momentum", symbol_id=s, venue="SIM")
            for s in range(1, 9)
        ]

        perf = time.perf_counter_ns
        allows = ks.allows
        audit_trade = logger.audit_trade
        gate_lat = array("q")
        trade_lat = array("q")
        per_tick = max(1, round(args.rate / 1000.0))
        ticks = max(1, int(args.seconds * 1000))
        drift = -limit / (0.6 * ticks)
        sigma = limit / (ticks**0.5) * 0.35
        pnl = 0
        position = 0
        order_id = 0
        denied = 0
        dropped = 0
        stop_report = None
        forced = False
        progress = _Progress(args.seconds, sys.stderr, not args.quiet)
        t_start = time.perf_counter()
        for tick in range(ticks):
            for j in range(per_tick):
                sc = symbols[j & 7]
                order_id += 1
                qty = rng.choice((-300, -200, -100, 100, 200, 300))
                g0 = perf()
                ok = allows(sc, False)
                g1 = perf()
                gate_lat.append(g1 - g0)
                if not ok:
                    denied += 1
                    continue
                seq = audit_trade(sc.symbol_id, qty, 10_000 + (order_id & 1023), order_id)
                trade_lat.append(perf() - g1)
                if seq < 0:
                    dropped += 1
                position += qty
                orch.open_orders[order_id & 63] = order_id
            # the P&L random walk, fed to the kill switch's triggers
            pnl += int(rng.gauss(drift, sigma))
            if stop_report is None and tick >= ticks * 0.95 and pnl > -limit:
                pnl = -limit  # the walk did not get there in time: a gap down
                forced = True
            was_halted = ks.halted
            ks.on_pnl(pnl)
            if not was_halted and ks.halted:
                stop_report = ks.last_report
            if tick % 50 == 0:
                elapsed = time.perf_counter() - t_start
                state = ks.trading_state(desk).name
                progress.update(
                    elapsed, f"trades {len(trade_lat):>9,}  P&L {pnl / 100:>12,.2f}  {state}"
                )
            deadline = t_start + (tick + 1) / 1000.0
            delay = deadline - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        elapsed = time.perf_counter() - t_start
        progress.update(elapsed, f"trades {len(trade_lat):>9,}  P&L {pnl / 100:>12,.2f}  done")
        progress.done()

        # measured side runs on a scratch log: the emergency stop with no-op handlers, the audit
        # call of the kill switch, and the timer's own cost
        stop_lat, block_lat, ks_audit_lat = _stop_bench(cfg, directory / "stop-bench", args)
        timer = array("q")
        for _ in range(10_000):
            a = perf()
            timer.append(perf() - a)
        timer_ns = sorted(timer)[len(timer) // 2]

        logger.flush(5.0)
        out.write("\n")
        attempts = len(trade_lat) + denied
        out.write(
            f"trading loop: {attempts:,} orders in {elapsed:.2f} s ({attempts / elapsed:,.0f}/s): "
            f"{len(trade_lat):,} trades audited, {denied:,} denied by the gate after the halt, "
            f"{dropped:,} audit calls dropped\n"
        )
        halts = list(read_audit_log(log_dir, kinds=[RecordKind.KILL_SWITCH]))
        if halts:
            r = halts[0]
            reason = getattr(r.reason_code, "name", r.code)
            out.write(
                f"kill switch fired: seq {r.seq} at {_iso(r.wall_ns)} reason {reason}, "
                f"P&L {r.b / 100:,.2f}" + (" (forced gap down)" if forced else "") + "\n"
            )
        else:
            out.write("kill switch did NOT fire\n")
        if stop_report is not None:
            hs = ", ".join(
                f"{h.name.split('.')[-1]} {h.elapsed_ns / 1e3:.1f} us" for h in stop_report.handlers
            )
            out.write(
                f"  trigger -> gate blocked {stop_report.trigger_to_block_ns / 1e3:.1f} us, "
                f"-> handlers done {stop_report.trigger_to_handlers_done_ns / 1e3:.1f} us "
                f"({hs}); live trading stopped: {not orch.live}, "
                f"{orch.cancelled} open orders cancelled\n"
            )
        out.write(
            "\nlatency (each call timed with a pair of perf_counter_ns, "
            f"~{timer_ns} ns of timer included):\n"
        )
        rows = [
            ("audit_trade", sorted(trade_lat)),
            ("order gate allows()", sorted(gate_lat)),
            ("audit_kill_switch", ks_audit_lat),
            ("emergency_stop (3 no-op handlers)", stop_lat),
            ("  trigger -> gate blocked", block_lat),
        ]
        _lat_table(rows, out)
        _gate_vs_noop(cfg, directory / "gate-bench", out)
        _write_hlog(cfg, directory / "latency.hlog", rows, out)

        st = logger.get_stats()
        out.write("\naudit stats:\n")
        keys = (
            "records_written",
            "records_flushed",
            "dropped_main",
            "dropped_emergency",
            "flushes",
            "bytes_written",
            "segments",
            "sink_errors",
            "durable_syncs",
        )
        for k in keys:
            if k in st:
                out.write(f"  {k:<18} {st[k]:>14,}\n")
    finally:
        logger.close()
        alerts.setLevel(alerts_level)

    rep = verify_audit_log(log_dir)
    out.write("\nverify:\n")
    out.write("\n".join("  " + line for line in rep.lines()) + "\n")

    if not args.no_plot:
        plot = Path(args.plot) if args.plot else directory / "latency.png"
        try:
            from .report import _default_targets, distribution, plot_percentiles

            plot_percentiles(
                {name.strip(): distribution(_SortedSamples(s)) for name, s in rows if s},
                plot,
                _default_targets(),
                title=f"killswitch-audit demo: latency by percentile ({args.rate:,}/s)",
            )
            out.write(f"\npercentile plot: {plot}\n")
        except ImportError:
            out.write(
                "\n(matplotlib not installed: no plot; pip install 'killswitch-audit[plot]')\n"
            )
        except Exception as e:
            out.write(f"\n(plot failed: {e})\n")
    if args.dir or args.keep:
        out.write(
            f"\nnext: {PROG} dump {log_dir} --kind KILL_SWITCH STATE_CHANGE STOP_STEP "
            "--format table\n"
        )
    else:
        # The audit logs are the big part (each logger fallocates a segment); the report
        # files (plot, HdrHistogram log: a few hundred KiB) stay so the chart stays useful.
        for sub in (log_dir, directory / "stop-bench"):
            shutil.rmtree(sub, ignore_errors=True)
        out.write(
            f"\nremoved the demo's audit logs; {directory} keeps the plot and latency.hlog "
            "(--keep keeps the logs too, for dump and verify)\n"
        )
    return EXIT_OK if rep.ok and halts else EXIT_FAILED


def _with_engine(cfg: Any, engine: str) -> Any:
    import dataclasses

    return dataclasses.replace(
        cfg, audit_system=dataclasses.replace(cfg.audit_system, engine=engine)
    )


def _stop_bench(cfg: Any, directory: Path, args: argparse.Namespace):
    from . import open_audit_logger
    from .killswitch import KillSwitch

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
        from ._native import noop_audit
    except ImportError:
        return
    from . import open_audit_logger

    logger = open_audit_logger(cfg, directory=directory)
    try:
        _gate_rounds(cfg, logger, noop_audit, out)
    finally:
        logger.close()


def _gate_rounds(cfg: Any, logger: Any, noop_audit: Any, out: TextIO) -> None:
    import gc

    from .killswitch import KillSwitch, Scope

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


def _write_hlog(cfg: Any, path: Path, rows: list[tuple[str, Sequence[int]]], out: TextIO) -> None:
    try:
        from .monitor import LatencyMonitor
    except Exception:
        return
    names = {
        "audit_trade": "trade_audit",
        "order gate allows()": "order_gate",
        "audit_kill_switch": "kill_switch_audit",
        "emergency_stop (3 no-op handlers)": "emergency_stop",
    }
    try:
        mon = LatencyMonitor(cfg)
    except Exception:
        return
    try:
        for name, samples in rows:
            op = names.get(name)
            if op is None:
                continue
            rec = mon.record
            for v in samples:
                rec(op, v)
        mon.write_hlog(path)
        out.write(f"\nHdrHistogram log: {path}  ({PROG} report {path})\n")
    except Exception as e:
        out.write(f"\n(hlog not written: {e})\n")
    finally:
        mon.close()


# --------------------------------------------------------------------------------------------
# argument parsing


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Kill switch with a lock-free audit trail: demo, inspect and verify logs.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser(
        "demo",
        help="simulated orchestrator: trades, a loss limit, the kill switch, a latency report",
        description="Runs a simulated orchestrator on the default config: a trading loop auditing "
        "trades, a P&L random walk that hits the daily loss limit and fires the kill switch, "
        "then the latency report, the audit stats and the log's verification.",
    )
    d.add_argument(
        "--dir",
        help="where to write, kept (default: a new temporary directory whose audit logs are "
        "removed at the end unless --keep)",
    )
    d.add_argument("--keep", action="store_true", help="keep the temporary directory's audit logs")
    d.add_argument("--rate", type=int, default=100_000, help="trades per second (default 100000)")
    d.add_argument(
        "--seconds", type=float, default=5.0, help="length of the trading loop (default 5)"
    )
    d.add_argument(
        "--loss-limit",
        type=int,
        default=2_500_000,
        metavar="CENTS",
        help="daily loss limit when the config sets none (default 2500000 cents)",
    )
    d.add_argument(
        "--stop-samples", type=int, default=20_000, help="emergency stops measured (default 20000)"
    )
    d.add_argument(
        "--config", help="YAML config (default: $KILLSWITCH_AUDIT_CONFIG or the packaged one)"
    )
    d.add_argument("--engine", choices=("rings", "direct"), help="override audit_system.engine")
    d.add_argument("--seed", type=int, default=7, help="random seed of the P&L walk")
    d.add_argument(
        "--plot", metavar="OUT.png", help="percentile plot path (default: DIR/latency.png)"
    )
    d.add_argument("--no-plot", action="store_true", help="do not write the percentile plot")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_demo)

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
    sub.add_parser("bench", help="benchmarks against the peers", add_help=False)
    from .cli_control import add_parsers as add_control_parsers  # halt/reset/status (issue 14)

    add_control_parsers(sub)
    from .console.cli import add_parser as add_console_parser  # the risk console (issue 15)

    add_console_parser(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # report and bench own their arguments (and their --help)
    if args_list and args_list[0] in ("report", "bench"):
        cmd, rest = args_list[0], args_list[1:]
        try:
            return cmd_report(rest) if cmd == "report" else cmd_bench(rest)
        except KeyboardInterrupt:
            return 130
        except Exception as e:
            _err(cmd, f"{type(e).__name__}: {e}" if not str(e) else str(e))
            return EXIT_FAILED
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except CliError as e:
        _err(args.command, str(e))
        return e.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK
    except Exception as e:  # one line, no traceback
        from .errors import AuditLogCorrupt, ConfigError

        if isinstance(e, (AuditLogCorrupt, ConfigError)):
            _err(args.command, str(e))
        elif isinstance(e, OSError):
            _err(args.command, f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")
        else:
            _err(args.command, f"{type(e).__name__}: {e}")
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
