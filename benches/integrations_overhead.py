"""Per-order cost of the kill switch inside NautilusTrader and freqtrade, next to each
platform's own per-order cost, measured in the same run (issue 16).

    python benches/integrations_overhead.py [--orders 2000] [--days 20] [--json FILE]

Needs the platforms (`make test-integrations` builds the venv). Prints p50/p90/p99/p99.9 in
µs of:

NautilusTrader (BacktestEngine, one instrument; `Strategy.submit_order` of a resting limit
order, timed around the call: strategy -> RiskEngine -> ExecEngine -> simulated venue's queue):
- `plain`: no kill switch (Nautilus's own per-order cost);
- `guarded`: with `install_kill_switch` (ACTIVE: the gate at ExecEngine.execute lets it pass);
- `denied (ours)`: the switch HALTED: the gate denies through the RiskEngine's OrderDenied
  path and writes one RISK_CHECK + TEXT per order;
- `denied (nautilus)`: no switch, Nautilus's own RiskEngine in TradingState.HALTED;
- `... gate itself`: the actor's own time at the door (its execute minus the execution
  engine's time behind it; denied: the whole denial, OrderDenied event and audit included);
- `allows()`: the bare gate call with the same Scope, for reference.

freqtrade (`freqtrade backtesting` in-process on generated candles, offline):
- `enter_trade`: freqtrade's `Backtesting._enter_trade` per entry, with a plain strategy
  (freqtrade's own per-order cost in a backtest);
- `enter_trade+mixin`: the same with `KillSwitchMixin` (gate + audited decision);
- `confirm (mixin)`: the mixin's `confirm_trade_entry` alone;
- `(cpu)`: the same calls in CPU time of the thread (`time.thread_time_ns`), which leaves out
  the time other processes held the core.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integrations"))  # the offline freqtrade kit

_ns = time.perf_counter_ns
# CPU time of the calling thread: what a call costs without the time other processes took
# the core (this machine's 2 cores are shared; wall-clock percentiles swing with the load)
_cpu = time.thread_time_ns


def pct(values: list[int], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * p / 100))] / 1e3


def summary(values: list[int]) -> dict[str, float]:
    return {f"p{p:g}": round(pct(values, p), 2) for p in (50, 90, 99, 99.9)}


# ----------------------------------------------------------------------------- NautilusTrader


def nautilus(n_orders: int, workdir: Path) -> dict[str, dict[str, float]]:
    from killswitch_audit import AuditConfig, AuditLogger, KillSwitch, Scope
    from killswitch_audit.integrations.nautilus import install_kill_switch
    from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
    from nautilus_trader.config import LoggingConfig, RiskEngineConfig, StrategyConfig
    from nautilus_trader.model.currencies import USD
    from nautilus_trader.model.data import Bar, BarType
    from nautilus_trader.model.enums import AccountType, OmsType, OrderSide, TradingState
    from nautilus_trader.model.identifiers import TraderId, Venue
    from nautilus_trader.model.objects import Money, Quantity
    from nautilus_trader.test_kit.providers import TestInstrumentProvider
    from nautilus_trader.trading.strategy import Strategy

    bar_type = BarType.from_str("AUD/USD.SIM-1-MINUTE-LAST-EXTERNAL")

    class Submitter(Strategy):
        def __init__(self, inst):
            super().__init__(StrategyConfig(order_id_tag="001"))
            self.inst = inst
            self.times: list[int] = []
            self.cpu: list[int] = []
            self.done = False

        def on_start(self):
            self.subscribe_bars(bar_type)

        def on_bar(self, bar):
            if self.done:
                return
            self.done = True
            i = self.inst
            price = i.make_price(0.5)
            qty = i.make_qty(1000)
            fac = self.order_factory
            submit = self.submit_order
            warm = 500
            gc.disable()
            try:
                for k in range(n_orders + warm):
                    o = fac.limit(i.id, OrderSide.BUY, qty, price)
                    c0 = _cpu()
                    t0 = _ns()
                    submit(o)
                    t1 = _ns()
                    c1 = _cpu()
                    if k >= warm:
                        self.times.append(t1 - t0)
                        self.cpu.append(c1 - c0)
            finally:
                gc.enable()

    def run(mode: str) -> list[int]:
        engine = BacktestEngine(
            BacktestEngineConfig(
                trader_id=TraderId("BENCH-001"),
                logging=LoggingConfig(log_level="ERROR"),
                # the default throttle (100 orders/s of simulated time, which stands still
                # here) would park all but 100 orders in the RiskEngine's buffer
                risk_engine=RiskEngineConfig(max_order_submit_rate="1000000/00:00:01"),
            )
        )
        engine.add_venue(
            venue=Venue("SIM"),
            oms_type=OmsType.NETTING,
            account_type=AccountType.MARGIN,
            base_currency=USD,
            starting_balances=[Money(1_000_000_000, USD)],
        )
        inst = TestInstrumentProvider.default_fx_ccy("AUD/USD")
        engine.add_instrument(inst)
        t0 = 1_704_153_600_000_000_000
        engine.add_data(
            [
                Bar(
                    bar_type,
                    inst.make_price(0.7),
                    inst.make_price(0.7001),
                    inst.make_price(0.6999),
                    inst.make_price(0.7),
                    Quantity.from_int(1_000_000),
                    t0 + k * 60_000_000_000,
                    t0 + k * 60_000_000_000,
                )
                for k in range(3)
            ]
        )
        strategy = Submitter(inst)
        engine.add_strategy(strategy)
        logger = ks = None
        if mode in ("guarded", "denied_ours"):
            d = workdir / f"nt-{mode}"
            logger = AuditLogger(d, segment_size_mb=64)
            ks = KillSwitch(
                logger,
                latency_monitor=False,
                config=AuditConfig.from_dict({}),
                triggers=[],
                check_clock=False,
                join_control=False,
            )
            actor = install_kill_switch(
                engine, ks, pump_interval=timedelta(hours=1), stop_node_on_halt=False
            )
            # timers around the actor's door and the execution engine behind it (nothing
            # replaced): the gate's own cost per order is the difference
            gate_times.clear()
            downstream = actor._downstream
            inner: list[int] = []

            def timed_downstream(command):
                t0 = _ns()
                downstream(command)
                inner.append(_ns() - t0)

            def timed_door(command):
                t0 = _ns()
                actor.execute(command)
                t1 = _ns()
                gate_times.append(t1 - t0 - (inner.pop() if inner else 0))

            actor._downstream = timed_downstream
            bus = engine.kernel.msgbus
            bus.deregister("ExecEngine.execute", actor.execute)
            bus.register("ExecEngine.execute", timed_door)
            if mode == "denied_ours":
                ks.emergency_stop("bench", scope=Scope(strategy="Submitter-001"))
        elif mode == "denied_nautilus":
            engine.kernel.risk_engine.set_trading_state(TradingState.HALTED)
        try:
            engine.run()
        finally:
            engine.dispose()
            if logger is not None:
                logger.close()
                shutil.rmtree(workdir / f"nt-{mode}", ignore_errors=True)
        return strategy.times, strategy.cpu

    out = {}
    gate_times: list[int] = []
    for mode in ("plain", "guarded", "denied_ours", "denied_nautilus"):
        wall, cpu = run(mode)
        out[mode] = summary(wall)
        out[f"{mode} (cpu)"] = summary(cpu)
        if mode in ("guarded", "denied_ours"):
            out[f"{mode}: gate itself"] = summary(gate_times[500:])
    out["allows()"] = summary(_bare_allows(workdir, n_orders))
    return out


def _bare_allows(workdir: Path, n: int) -> list[int]:
    from killswitch_audit import AuditConfig, AuditLogger, KillSwitch, Scope

    d = workdir / "bare"
    logger = AuditLogger(d, segment_size_mb=64)
    try:
        ks = KillSwitch(
            logger,
            latency_monitor=False,
            config=AuditConfig.from_dict({}),
            triggers=[],
            check_clock=False,
            join_control=False,
        )
        allows = ks.allows
        scope = Scope("BENCH-001", "Submitter-001", 7, "SIM")
        times = []
        for _ in range(n):
            t0 = _ns()
            allows(scope, False)
            times.append(_ns() - t0)
        return times
    finally:
        logger.close()
        shutil.rmtree(d, ignore_errors=True)


# ----------------------------------------------------------------------------- freqtrade


def freqtrade(days: int, workdir: Path) -> dict[str, dict[str, float]]:
    from ft_fixture import MarketsServer, bot_config, write_ohlcv

    out: dict[str, dict[str, float]] = {}
    server = MarketsServer()
    try:
        for mixin in (False, True):
            tmp = workdir / f"ft-{int(mixin)}"
            tmp.mkdir()
            write_ohlcv(tmp / "data", days * 288)
            # a limit no run reaches: every entry is allowed, so both runs trade alike
            cfg = bot_config(tmp, server.url, tmp / "audit", 10**15)
            _write_bench_strategy(tmp / "strategies", mixin)
            # each run in a fresh process: freqtrade keeps backtest trades in class-level
            # lists, so a second run in the same process pays for the first one's
            child = subprocess.run(
                [sys.executable, __file__, "--ft-child", str(tmp), str(cfg)],
                capture_output=True,
                text=True,
                check=True,
            )
            enter, cpu, confirm = json.loads(child.stdout.strip().splitlines()[-1])
            name = "enter_trade+mixin" if mixin else "enter_trade"
            out[name] = summary(enter)
            out[f"{name} (cpu)"] = summary(cpu)
            if mixin:
                out["confirm (mixin)"] = summary(confirm)
            out[f"trades ({'mixin' if mixin else 'plain'})"] = {"n": len(enter)}
    finally:
        server.close()
    return out


_FT_STRATEGY = """
from freqtrade.strategy import IStrategy
{imp}

class KsBench({bases}):
    INTERFACE_VERSION = 3
    timeframe = "5m"
    minimal_roi = {{"0": 10.0}}
    stoploss = -0.003
    startup_candle_count = 0

    def populate_indicators(self, dataframe, metadata):
        return dataframe

    def populate_entry_trend(self, dataframe, metadata):
        dataframe["enter_long"] = 1
        return dataframe

    def populate_exit_trend(self, dataframe, metadata):
        dataframe["exit_long"] = 0
        return dataframe
"""


def _write_bench_strategy(directory: Path, mixin: bool) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    imp = "from killswitch_audit.integrations.freqtrade import KillSwitchMixin" if mixin else ""
    bases = "KillSwitchMixin, IStrategy" if mixin else "IStrategy"
    (directory / "ks_bench.py").write_text(_FT_STRATEGY.format(imp=imp, bases=bases))


def _ft_run(tmp: Path, cfg: Path) -> tuple[list[int], list[int], list[int]]:
    from freqtrade.configuration import Configuration
    from freqtrade.enums import RunMode
    from freqtrade.optimize.backtesting import Backtesting

    args = {
        "config": [str(cfg)],
        "strategy": "KsBench",
        "strategy_path": str(tmp / "strategies"),
        "datadir": str(tmp / "data" / "binance"),
        "timerange": None,
        "export": "none",
    }
    config = Configuration(args, RunMode.BACKTEST).get_config()
    bt = Backtesting(config)
    enter_times: list[int] = []
    cpu_times: list[int] = []
    confirm_times: list[int] = []
    inner = bt._enter_trade

    def timed_enter(*a, **k):  # a timer around freqtrade's own method, nothing replaced
        c0 = _cpu()
        t0 = _ns()
        r = inner(*a, **k)
        enter_times.append(_ns() - t0)
        cpu_times.append(_cpu() - c0)
        return r

    bt._enter_trade = timed_enter
    strategy = bt.strategylist[0]
    if hasattr(strategy, "kill_switch_scope"):
        confirm = strategy.confirm_trade_entry

        def timed_confirm(*a, **k):
            t0 = _ns()
            r = confirm(*a, **k)
            confirm_times.append(_ns() - t0)
            return r

        strategy.confirm_trade_entry = timed_confirm
    try:
        bt.start()
    finally:
        ks = getattr(strategy, "kill_switch", None)
        if ks is not None:
            if ks.control is not None:
                ks.control.close()
            ks.audit_logger.close()
    return enter_times, cpu_times, confirm_times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", type=int, default=2000, help="Nautilus orders per mode")
    ap.add_argument("--days", type=int, default=20, help="freqtrade days of 5-minute candles")
    ap.add_argument("--json", help="also write the numbers to this file")
    ap.add_argument("--ft-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.ft_child:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # freqtrade's report tables
            runs = _ft_run(Path(args.ft_child[0]), Path(args.ft_child[1]))
        print(json.dumps(runs))
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="ks-integrations-bench-"))
    results: dict[str, dict] = {}
    try:
        results["nautilus_trader"] = nautilus(args.orders, workdir)
        results["freqtrade"] = freqtrade(args.days, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    import freqtrade as ft
    import nautilus_trader as nt

    results["versions"] = {"nautilus_trader": nt.__version__, "freqtrade": ft.__version__}
    for platform, rows in results.items():
        print(f"== {platform}")
        for name, row in rows.items():
            cells = "  ".join(f"{k}={v}" for k, v in row.items()) if isinstance(row, dict) else row
            print(f"  {name:<22} {cells}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
