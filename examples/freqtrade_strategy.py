"""A freqtrade strategy with the kill switch (pip install 'killswitch-audit[freqtrade]').

    freqtrade backtesting --strategy-path examples --strategy GuardedRSI --config config.json

with, in config.json, where the audit log goes and what trips the switch (the value of
`settings` is a killswitch-audit config; `config_file: path.yaml` names one instead):

    "killswitch_audit": {
        "log_dir": "user_data/killswitch_audit",
        "settings": {
            "kill_switch": {"triggers": {"daily_loss_limit_cents": 50000,
                                         "repeated_executions": {"count": 50, "window_s": 60}}},
            "control": {"directory": "/run/killswitch-audit"}
        }
    }

Entries are denied while the bot's scope is HALTED or REDUCING (a loss past the limit, or
`killswitch-audit halt --scope account=<bot_name>` from an operator's shell); exits are never
blocked; every decision is in the audit log (`killswitch-audit dump user_data/killswitch_audit`).
"""

from __future__ import annotations

from freqtrade.strategy import IStrategy
from killswitch_audit.integrations.freqtrade import KillSwitchMixin


class GuardedRSI(KillSwitchMixin, IStrategy):  # wraps the class's hooks, overrides too
    INTERFACE_VERSION = 3
    timeframe = "5m"
    minimal_roi = {"0": 0.02}
    stoploss = -0.05
    startup_candle_count = 15

    def populate_indicators(self, dataframe, metadata):
        delta = dataframe["close"].diff()
        gain = delta.clip(lower=0).rolling(14).mean()
        loss = (-delta.clip(upper=0)).rolling(14).mean()
        dataframe["rsi"] = 100 - 100 / (1 + gain / loss)
        return dataframe

    def populate_entry_trend(self, dataframe, metadata):
        dataframe.loc[dataframe["rsi"] < 30, "enter_long"] = 1
        return dataframe

    def populate_exit_trend(self, dataframe, metadata):
        dataframe.loc[dataframe["rsi"] > 70, "exit_long"] = 1
        return dataframe
