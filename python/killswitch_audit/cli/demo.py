"""`killswitch-audit demo`: the README's main job. A simulated orchestrator trades through the
kill switch's gate, a P&L walk hits the daily loss limit and fires the switch, then the latency
report (the measured side is in bench.py), the audit stats, the log's verification and a
percentile plot.
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import sys
import tempfile
import time
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .bench import _gate_vs_noop, _stop_bench
from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, PROG, CliError, _iso

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
    from .. import open_audit_logger
    from ..config import load_config
    from ..format import RecordKind
    from ..killswitch import KillSwitch, LossLimit, Scope
    from ..reader import read_audit_log, verify_audit_log

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
            from ..report import _default_targets, distribution, plot_percentiles

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


def _write_hlog(cfg: Any, path: Path, rows: list[tuple[str, Sequence[int]]], out: TextIO) -> None:
    try:
        from ..monitor import LatencyMonitor
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


def add_parser(sub: Any) -> None:
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
