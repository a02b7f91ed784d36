"""freqtrade with the kill switch, on the real `freqtrade` from PyPI: `freqtrade backtesting`
(a real subprocess) on generated OHLCV, offline (tests/integrations/ft_fixture.py), with a
strategy that uses `KillSwitchMixin` (`make test-integrations`; skipped without freqtrade)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

pytest.importorskip("freqtrade", reason="freqtrade not installed (make test-integrations)")

import killswitch_audit
from ft_fixture import PAIR, MarketsServer, bot_config, write_ohlcv, write_strategy
from integ_auditlog import AuditLog
from killswitch_audit import KillSwitchReason, RecordKind, TradingState
from killswitch_audit.integrations import GATE_CHECK, OUTCOME_ALLOWED, OUTCOME_DENIED

# the directory this test imported killswitch_audit from (the worktree's python/ or
# site-packages): freqtrade's process loads the strategy, and so the package, from there too
PACKAGE_PATH = str(Path(killswitch_audit.__file__).resolve().parents[1])


def run_backtest(tmp_path: Path, loss_limit_cents: int) -> tuple[AuditLog, list]:
    server = MarketsServer()
    try:
        write_ohlcv(tmp_path / "data", 288)  # one day of 5-minute candles
        cfg = bot_config(tmp_path, server.url, tmp_path / "audit", loss_limit_cents)
        write_strategy(tmp_path / "strategies")
        (tmp_path / "bt").mkdir()
        env = dict(os.environ, PYTHONPATH=PACKAGE_PATH)
        env.pop("KILLSWITCH_AUDIT_CONTROL", None)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "freqtrade",
                "backtesting",
                "--config",
                str(cfg),
                "--strategy",
                "KsLoser",
                "--strategy-path",
                str(tmp_path / "strategies"),
                "--datadir",
                str(tmp_path / "data" / "binance"),
                "--timerange",
                "20240101-20240102",
                "--export",
                "trades",
                "--backtest-directory",
                str(tmp_path / "bt"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.close()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    from freqtrade.data.btanalysis import load_backtest_data

    trades = load_backtest_data(tmp_path / "bt")
    return AuditLog(tmp_path / "audit"), list(trades.itertuples())


def decision_time(r) -> datetime:
    return datetime.fromtimestamp(r.b / 1000, tz=timezone.utc)  # the candle, in `b`


def test_backtest_entries_denied_after_the_halt_exits_allowed_decisions_audited(tmp_path):
    log, trades = run_backtest(tmp_path, loss_limit_cents=500)

    kills = log.of(RecordKind.KILL_SWITCH)
    assert len(kills) == 1
    kill = kills[0]
    assert kill.reason_code == KillSwitchReason.DAILY_LOSS_LIMIT
    assert kill.pnl_cents <= -500

    checks = [r for r in log.of(RecordKind.RISK_CHECK) if r.code == GATE_CHECK]
    entries = [r for r in checks if " entry " in log.text(r)]
    exits = [r for r in checks if " exit " in log.text(r)]
    before = [r for r in entries if r.seq < kill.seq]
    after = [r for r in entries if r.seq > kill.seq]
    # before the halt every entry was let through; after it, every one was denied
    assert before and all(r.c == OUTCOME_ALLOWED for r in before)
    assert len(after) > 100
    assert all(r.c == OUTCOME_DENIED and r.a == int(TradingState.HALTED) for r in after)
    # the trade open at the halt still left (stop-loss), allowed under HALTED
    exits_after = [r for r in exits if r.seq > kill.seq]
    assert exits_after and all(r.c == OUTCOME_ALLOWED for r in exits_after)
    assert all(r.a == int(TradingState.HALTED) for r in exits_after)
    assert all(r.c == OUTCOME_ALLOWED for r in exits)

    # freqtrade's own result agrees: one trade per allowed entry, none opened after the halt,
    # every trade closed (the exit went out)
    assert len(trades) == len(before) == len(exits)
    first_denied = decision_time(after[0])
    assert all(t.open_date < first_denied for t in trades)
    assert all(t.exit_reason == "stop_loss" for t in trades)
    assert all(PAIR in log.text(r) for r in checks)


def test_backtest_without_a_loss_past_the_limit_never_halts(tmp_path):
    # the same run with a limit the strategy never reaches: no halt, nothing denied (the
    # denials above come from the switch, not from the data)
    log, trades = run_backtest(tmp_path, loss_limit_cents=1_000_000)
    assert log.of(RecordKind.KILL_SWITCH) == []
    checks = [r for r in log.of(RecordKind.RISK_CHECK) if r.code == GATE_CHECK]
    assert checks and all(r.c == OUTCOME_ALLOWED for r in checks)
    assert len(trades) > 50


def _switch(tmp_path):
    from killswitch_audit import AuditConfig, AuditLogger, KillSwitch

    logger = AuditLogger(tmp_path / "log", segment_size_mb=1, emergency_buffer_size=1024)
    ks = KillSwitch(
        logger,
        latency_monitor=False,
        config=AuditConfig.from_dict({}),
        triggers=[],
        check_clock=False,
        join_control=False,
    )
    return logger, ks


def test_hooks_are_gated_once_whatever_the_strategy_overrides(tmp_path):
    from freqtrade.strategy import IStrategy
    from killswitch_audit import Scope
    from killswitch_audit.integrations.freqtrade import KillSwitchMixin

    class Base(KillSwitchMixin, IStrategy):
        INTERFACE_VERSION = 3
        timeframe = "5m"
        minimal_roi = {"0": 1.0}
        stoploss = -0.1

        def populate_indicators(self, df, metadata):
            return df

        def populate_entry_trend(self, df, metadata):
            return df

        def populate_exit_trend(self, df, metadata):
            return df

    class CallsSuper(Base):  # an override that calls super(): still one decision per entry
        def confirm_trade_entry(self, **kwargs):
            return super().confirm_trade_entry(**kwargs)

    # IStrategy's own hooks, wrapped, keep their name: freqtrade deep-copies `trade` for a
    # strategy's own hook only (strategy_wrapper.py), not for these
    assert Base.order_filled.__qualname__ == "IStrategy.order_filled"
    assert Base.confirm_trade_exit.__qualname__ == "IStrategy.confirm_trade_exit"

    logger, ks = _switch(tmp_path)
    try:
        s = CallsSuper({"bot_name": "b1", "exchange": {"name": "binance"}})
        s.kill_switch = ks
        s.bot_start()
        entry = {
            "pair": PAIR,
            "order_type": "limit",
            "amount": 0.5,
            "rate": 100.0,
            "time_in_force": "GTC",
            "current_time": datetime(2024, 1, 1, tzinfo=timezone.utc),
            "entry_tag": None,
            "side": "long",
        }
        assert s.confirm_trade_entry(**entry) is True
        ks.emergency_stop("test", scope=Scope(account="b1"))
        assert s.confirm_trade_entry(**entry) is False
        assert s.kill_switch_scope(PAIR)[0] == Scope(
            "b1", "CallsSuper", s.kill_switch_scope(PAIR)[1], "binance"
        )
    finally:
        logger.close()
    log = AuditLog(tmp_path / "log")
    checks = [r for r in log.of(RecordKind.RISK_CHECK) if r.code == GATE_CHECK]
    assert [r.c for r in checks] == [OUTCOME_ALLOWED, OUTCOME_DENIED]
    assert checks[0].b == 1_704_067_200_000  # the decision's time


def test_an_operator_halt_from_the_control_plane_denies_the_bots_entries(tmp_path):
    # the bot's switch built from its freqtrade config (`killswitch_audit.settings.control`),
    # halted by an operator through the host-local control plane; exits still pass
    from freqtrade.strategy import IStrategy
    from killswitch_audit.control import ControlPlane, init_directory
    from killswitch_audit.integrations.freqtrade import KillSwitchMixin

    control = tmp_path / "control"
    init_directory(control)

    class Bot(KillSwitchMixin, IStrategy):
        INTERFACE_VERSION = 3
        timeframe = "5m"
        minimal_roi = {"0": 1.0}
        stoploss = -0.1

        def populate_indicators(self, df, metadata):
            return df

        def populate_entry_trend(self, df, metadata):
            return df

        def populate_exit_trend(self, df, metadata):
            return df

    cfg = {
        "bot_name": "ftbot",
        "exchange": {"name": "binance"},
        "killswitch_audit": {
            "log_dir": str(tmp_path / "log"),
            "settings": {"control": {"directory": str(control)}},
        },
    }
    bot = Bot(cfg)
    bot.bot_start()
    ks = bot.kill_switch
    when = datetime(2024, 1, 1, tzinfo=timezone.utc)
    entry = {
        "pair": PAIR,
        "order_type": "limit",
        "amount": 0.5,
        "rate": 100.0,
        "time_in_force": "GTC",
        "current_time": when,
        "entry_tag": None,
        "side": "long",
    }
    exit_ = {
        "pair": PAIR,
        "trade": None,
        "order_type": "limit",
        "amount": 0.5,
        "rate": 100.0,
        "time_in_force": "GTC",
        "exit_reason": "force_exit",
        "current_time": when,
    }
    try:
        assert ks.control is not None, "the bot's switch did not join the control plane"
        assert bot.confirm_trade_entry(**entry) is True
        result = ControlPlane(control).halt(
            "account=ftbot", operator="alice", reason="desk halt", wait_s=10
        )
        assert result.ok, result
        assert bot.confirm_trade_entry(**entry) is False
        assert bot.confirm_trade_exit(**exit_) is True
    finally:
        ks.control.close()
        ks.audit_logger.close()
    log = AuditLog(tmp_path / "log")
    kills = log.of(RecordKind.KILL_SWITCH)
    assert len(kills) == 1 and "alice" in log.text(kills[0])
    checks = [r for r in log.of(RecordKind.RISK_CHECK) if r.code == GATE_CHECK]
    assert [(r.c, r.a) for r in checks] == [
        (OUTCOME_ALLOWED, int(TradingState.ACTIVE)),
        (OUTCOME_DENIED, int(TradingState.HALTED)),
        (OUTCOME_ALLOWED, int(TradingState.HALTED)),  # the exit
    ]


def test_a_bad_killswitch_section_is_a_clear_config_error(tmp_path):
    from killswitch_audit import ConfigError
    from killswitch_audit.integrations.freqtrade import kill_switch_from_config

    with pytest.raises(ConfigError, match="unknown keys"):
        kill_switch_from_config({"killswitch_audit": {"log_dri": str(tmp_path)}})
    with pytest.raises(ConfigError, match="must be an object"):
        kill_switch_from_config({"killswitch_audit": "yes"})
    with pytest.raises(ConfigError, match="daily_loss_limit_cents"):
        kill_switch_from_config(
            {
                "killswitch_audit": {
                    "log_dir": str(tmp_path / "log"),
                    "settings": {"kill_switch": {"triggers": {"daily_loss_limit_cents": -5}}},
                }
            }
        )
    assert not (tmp_path / "log").exists()  # nothing opened for a config that is refused
