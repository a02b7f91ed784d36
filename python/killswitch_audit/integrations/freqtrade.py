"""The kill switch inside a freqtrade strategy (extra `[freqtrade]`; docs/INTEGRATIONS.md).

    from freqtrade.strategy import IStrategy
    from killswitch_audit.integrations.freqtrade import KillSwitchMixin

    class MyStrategy(KillSwitchMixin, IStrategy):   # the mixin first: it wraps the hooks
        ...

and in the bot's config (JSON), where the switch writes and what trips it:

    "killswitch_audit": {"log_dir": "user_data/audit",
                         "settings": {"kill_switch": {"triggers":
                                                      {"daily_loss_limit_cents": 50000}}}}

`settings` is a killswitch-audit config (the YAML schema, as a mapping; `config_file` names a
YAML file instead); its `control:` section joins the control plane, so an operator's
`killswitch-audit halt` halts the bot. What this module owns:

- `confirm_trade_entry`: an entry goes out only when `ks.allows(scope)` (ACTIVE; REDUCING and
  HALTED deny every entry), with `Scope(account=<bot_name>, strategy=<class name>,
  symbol_id=symbol_id_for(pair), venue=<exchange>)`; the strategy's own answer (super) is
  asked only when the gate allows. freqtrade treats an exception in this hook as "confirm",
  so any failure here denies (fail closed).
- `adjust_trade_position`: a position increase (DCA) bypasses `confirm_trade_entry` in
  freqtrade, so it passes the same gate (reductions always pass).
- `confirm_trade_exit`: never blocked by the switch (a halt must not trap a position);
  audited with the state it was taken under.
- `order_filled`: each fill feeds `on_fill` (RepeatedExecutions), each exit fill adds its
  realised profit; `bot_loop_start` (once per candle in a backtest, once per loop live) feeds
  `on_pnl` (LossLimit, Drawdown) with that plus the open trades' unrealised profit at the
  latest candle (`kill_switch_pnl`), before that loop's entries are considered.
- every decision is audited: one RISK_CHECK record (`code` GATE_CHECK, `c` 0 allowed /
  1 denied, `a` the state, `b` the candle's time in ms) with a TEXT naming the side and pair.

P&L is in cents of the stake currency. Triggers from `settings` are firm-wide (the bot).
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from typing import Any, Optional

try:
    from freqtrade.persistence import Trade
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "killswitch_audit.integrations.freqtrade needs freqtrade: "
        "pip install 'killswitch-audit[freqtrade]'"
    ) from e

from ..format import TradingState
from ..killswitch.scope import Scope
from . import audit_decision, symbol_id_for

__all__ = ["KillSwitchMixin", "kill_switch_from_config"]

log = logging.getLogger("killswitch_audit.integrations.freqtrade")

_ACTIVE = int(TradingState.ACTIVE)


def kill_switch_from_config(ft_config: dict[str, Any]) -> Any:
    """A KillSwitch (and its AuditLogger) as the freqtrade config's `killswitch_audit` section
    says: `log_dir` (default `<user_data_dir>/killswitch_audit`), `settings` (a
    killswitch-audit config mapping) or `config_file` (a YAML file)."""
    from .. import AuditConfig, KillSwitch, load_config, open_audit_logger
    from ..errors import ConfigError

    section = ft_config.get("killswitch_audit") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"freqtrade config key 'killswitch_audit' must be an object: {section!r}")
    unknown = set(section) - {"log_dir", "settings", "config_file"}
    if unknown:
        raise ConfigError(f"freqtrade config 'killswitch_audit': unknown keys {sorted(unknown)}")
    if "settings" in section and "config_file" in section:
        raise ConfigError("freqtrade config 'killswitch_audit': give settings or config_file")
    if "config_file" in section:
        cfg = load_config(section["config_file"])
    else:
        cfg = AuditConfig.from_dict(
            section.get("settings") or {}, source="freqtrade config killswitch_audit.settings"
        )
    log_dir = section.get("log_dir") or os.path.join(
        str(ft_config.get("user_data_dir") or "user_data"), "killswitch_audit"
    )
    logger = open_audit_logger(cfg, log_dir)
    return KillSwitch(logger, config=cfg)


class KillSwitchMixin:
    """Put it before `IStrategy` in the bases (see the module doc). Set `kill_switch` (a
    KillSwitch) before the bot starts to bring your own, else `bot_start` builds one from the
    config's `killswitch_audit` section. `kill_switch_scope_account`: the `account` of the
    scope (default: the config's `bot_name`)."""

    kill_switch: Any = None
    kill_switch_scope_account: Optional[str] = None

    # ------------------------------------------------------------------ set-up

    def bot_start(self, **kwargs: Any) -> None:
        if self.kill_switch is None:
            self.kill_switch = kill_switch_from_config(self.config)
        self._ks_scopes: dict[str, tuple[Scope, int]] = {}
        self._ks_pnl_cents = 0
        self._ks_realised = 0.0  # stake currency, from exit fills
        parent = getattr(super(), "bot_start", None)
        if parent is not None:
            parent(**kwargs)

    def kill_switch_scope(self, pair: str) -> tuple[Scope, int]:
        """(Scope, symbol_id) of orders on `pair`, cached."""
        got = self._ks_scopes.get(pair)
        if got is None:
            cfg = self.config
            account = self.kill_switch_scope_account or str(cfg.get("bot_name") or "freqtrade")
            venue = str((cfg.get("exchange") or {}).get("name") or "") or None
            sym = symbol_id_for(pair)
            got = (Scope(account, type(self).__name__, sym, venue), sym)
            self._ks_scopes[pair] = got
        return got

    # ------------------------------------------------------------------ entries

    def confirm_trade_entry(
        self,
        pair: str,
        order_type: str,
        amount: float,
        rate: float,
        time_in_force: str,
        current_time: datetime,
        entry_tag: Optional[str],
        side: str,
        **kwargs: Any,
    ) -> bool:
        try:
            allowed = self._ks_gate(pair, f"entry {side} {pair} amount={amount:g}", current_time)
        except Exception as e:  # freqtrade would take an exception as "confirm": deny
            log.error("kill switch: entry check for %s failed (%r): denied", pair, e)
            return False
        if not allowed:
            return False
        return bool(
            super().confirm_trade_entry(  # type: ignore[misc]
                pair,
                order_type,
                amount,
                rate,
                time_in_force,
                current_time,
                entry_tag,
                side,
                **kwargs,
            )
        )

    def adjust_trade_position(self, trade: Any, current_time: datetime, *args: Any, **kwargs: Any):
        result = super().adjust_trade_position(trade, current_time, *args, **kwargs)  # type: ignore[misc]
        stake = result[0] if isinstance(result, tuple) else result
        if stake is None or stake <= 0:
            return result  # nothing, or a reduction: never blocked
        try:
            allowed = self._ks_gate(
                trade.pair, f"increase {trade.pair} stake={stake:g}", current_time
            )
        except Exception as e:
            log.error("kill switch: increase check for %s failed (%r): denied", trade.pair, e)
            return None
        return result if allowed else None

    def _ks_gate(self, pair: str, what: str, current_time: Any) -> bool:
        ks = self.kill_switch
        scope, sym = self.kill_switch_scope(pair)
        allowed = bool(ks.allows(scope, False))
        state = _ACTIVE if allowed else int(ks.trading_state(scope))
        audit_decision(
            ks,
            allowed,
            sym,
            state,
            f"freqtrade {'allowed' if allowed else 'denied'} {what}",
            _ms(current_time),
        )
        if allowed:
            ks.on_order()
        return allowed

    # ------------------------------------------------------------------ exits

    def confirm_trade_exit(
        self,
        pair: str,
        trade: Any,
        order_type: str,
        amount: float,
        rate: float,
        time_in_force: str,
        exit_reason: str,
        current_time: datetime,
        **kwargs: Any,
    ) -> bool:
        try:
            ks = self.kill_switch
            scope, sym = self.kill_switch_scope(pair)
            state = int(ks.trading_state(scope))
            audit_decision(
                ks,
                True,
                sym,
                state,
                f"freqtrade allowed exit {pair} {exit_reason}",
                _ms(current_time),
            )
        except Exception as e:  # an exit is never blocked by the switch, not even by its bug
            log.error("kill switch: auditing the exit of %s failed: %r", pair, e)
        return bool(
            super().confirm_trade_exit(  # type: ignore[misc]
                pair,
                trade,
                order_type,
                amount,
                rate,
                time_in_force,
                exit_reason,
                current_time,
                **kwargs,
            )
        )

    # ------------------------------------------------------------------ triggers

    def order_filled(
        self, pair: str, trade: Any, order: Any, current_time: datetime, **kwargs: Any
    ) -> None:
        try:
            _, sym = self.kill_switch_scope(pair)
            filled = float(order.safe_filled or 0.0)
            self.kill_switch.on_fill(sym, int(filled))
            if order.ft_order_side == trade.exit_side and filled > 0:
                # the realised profit of this exit fill (fees included), whether freqtrade
                # has closed the trade yet or not (a backtest closes it after this hook)
                profit = trade.calculate_profit(order.safe_price, filled).profit_abs
                self._ks_realised += float(profit)
        except Exception as e:
            log.error("kill switch: feeding the fill of %s failed: %r", pair, e)
        super().order_filled(pair, trade, order, current_time, **kwargs)  # type: ignore[misc]

    def bot_loop_start(self, current_time: datetime, **kwargs: Any) -> None:
        try:
            self._ks_feed_pnl(self.kill_switch_pnl())
        except Exception as e:  # the P&L could not be known: the trigger cannot watch it
            log.error("kill switch: marking P&L failed: %r", e)
        super().bot_loop_start(current_time, **kwargs)  # type: ignore[misc]

    def kill_switch_pnl(self) -> float:
        """P&L of the bot in the stake currency since it started: the realised profit of
        every exit fill plus the unrealised profit of the open trades at the latest candle's
        close (O(open trades) per loop)."""
        pnl = self._ks_realised
        for trade in Trade.get_open_trades():
            rate = self._ks_rate(trade.pair)
            if rate is not None:
                pnl += float(trade.calculate_profit(rate).profit_abs)
        return pnl

    def _ks_rate(self, pair: str) -> Optional[float]:
        dp = getattr(self, "dp", None)
        if dp is None:
            return None
        df, _ = dp.get_analyzed_dataframe(pair, self.timeframe)
        if df is None or len(df) == 0:
            return None
        return float(df["close"].iloc[-1])

    def _ks_feed_pnl(self, pnl: float) -> None:
        cents = round(pnl * 100)
        self._ks_pnl_cents = cents
        self.kill_switch.on_pnl(cents)


def _ms(t: Any) -> int:
    """ms since the epoch of a datetime or pandas Timestamp (0 when it has none); cheaper
    than formatting it (a Timestamp's strftime costs tens of µs)."""
    try:
        return int(t.timestamp() * 1000)
    except Exception:
        return 0
