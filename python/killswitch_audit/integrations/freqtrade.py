"""The kill switch inside a freqtrade strategy (extra `[freqtrade]`; docs/INTEGRATIONS.md).

    from freqtrade.strategy import IStrategy
    from killswitch_audit.integrations.freqtrade import KillSwitchMixin

    class MyStrategy(KillSwitchMixin, IStrategy):   # wraps the class's hooks, overrides too
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
  symbol_id=symbol_id_for(pair), venue=<exchange>)`; the strategy's own
  `confirm_trade_entry`, if it has one, is asked only when the gate allows (it cannot skip
  the gate by not calling super(): see `KillSwitchMixin`). freqtrade treats an exception in
  this hook as "confirm", so any failure here denies (fail closed).
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

import functools
import logging
import os
from datetime import datetime
from typing import Any, Callable, Optional

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


_HOOKS = (
    "bot_start",
    "bot_loop_start",
    "confirm_trade_entry",
    "confirm_trade_exit",
    "adjust_trade_position",
    "order_filled",
)


class KillSwitchMixin:
    """Put it in a strategy's bases (see the module doc). Set `kill_switch` (a KillSwitch)
    before the bot starts to bring your own, else `bot_start` builds one from the config's
    `killswitch_audit` section. `kill_switch_scope_account`: the `account` of the scope
    (default: the config's `bot_name`).

    The mixin defines none of freqtrade's hooks itself: every subclass gets its hooks wrapped
    (`__init_subclass__`) around whatever the class resolves, the strategy's own override or
    IStrategy's default, so a strategy that overrides `confirm_trade_entry` without calling
    super() is still gated. A wrapper around IStrategy's default keeps its qualified name, so
    freqtrade does not deep-copy the trade for it (it does for a strategy's own hook that
    takes `trade`: about 1 ms per call in a backtest with many trades)."""

    kill_switch: Any = None
    kill_switch_scope_account: Optional[str] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in _HOOKS:
            impl = getattr(cls, name, None)
            if impl is None or getattr(impl, "_ks_hook", None) == name:
                continue  # not a hook of this class, or wrapped on a parent already
            setattr(cls, name, _WRAPPERS[name](impl))

    # ------------------------------------------------------------------ the switch's side

    def _ks_start(self) -> None:
        if self.kill_switch is None:
            self.kill_switch = kill_switch_from_config(self.config)
        self._ks_scopes: dict[str, tuple[Scope, int]] = {}
        self._ks_pnl_cents = 0
        self._ks_realised = 0.0  # stake currency, from exit fills

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

    def _ks_gate(self, pair: str, what: str, current_time: Any) -> bool:
        """The entry gate: allowed only ACTIVE; every decision audited. Never raises: a
        check that fails denies (fail closed)."""
        try:
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
        except Exception as e:  # freqtrade would take an exception as "confirm": deny
            log.error("kill switch: check of %s (%s) failed (%r): denied", pair, what, e)
            return False

    def _ks_exit(self, pair: str, exit_reason: str, current_time: Any) -> None:
        try:
            ks = self.kill_switch
            scope, sym = self.kill_switch_scope(pair)
            state = int(ks.trading_state(scope))
            text = f"freqtrade allowed exit {pair} {exit_reason}"
            audit_decision(ks, True, sym, state, text, _ms(current_time))
        except Exception as e:  # an exit is never blocked by the switch, not even by its bug
            log.error("kill switch: auditing the exit of %s failed: %r", pair, e)

    def _ks_fill(self, pair: str, trade: Any, order: Any) -> None:
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

    def _ks_loop(self) -> None:
        try:
            cents = round(self.kill_switch_pnl() * 100)
            self._ks_pnl_cents = cents
            self.kill_switch.on_pnl(cents)
        except Exception as e:  # the P&L could not be known: the trigger cannot watch it
            log.error("kill switch: marking P&L failed: %r", e)

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


# ---------------------------------------------------------------------- the hook wrappers
# Each runs the switch's side once per call, then the hook (a strategy's override that calls
# super() reaches a parent's wrapper, which sees the flag and passes straight through).


class _Reentry:
    __slots__ = ("name", "self")

    def __init__(self, obj: Any, name: str):
        self.self, self.name = obj, name

    def __enter__(self) -> None:
        self.self.__dict__[self.name] = True

    def __exit__(self, *exc: Any) -> None:
        self.self.__dict__.pop(self.name, None)


def _hook(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    flag = f"_ks_in_{name}"

    def decorate(make: Callable[..., Any]) -> Callable[..., Any]:
        def factory(impl: Callable[..., Any]) -> Callable[..., Any]:
            wrapper = make(impl, flag)
            functools.update_wrapper(wrapper, impl)
            wrapper._ks_hook = name  # type: ignore[attr-defined]
            return wrapper

        _WRAPPERS[name] = factory
        return factory

    return decorate


_WRAPPERS: dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]] = {}


@_hook("bot_start")
def _bot_start(impl: Callable[..., Any], flag: str) -> Callable[..., Any]:
    def bot_start(self: Any, **kwargs: Any) -> None:
        if flag not in self.__dict__:
            self._ks_start()
        with _Reentry(self, flag):
            impl(self, **kwargs)

    return bot_start


@_hook("bot_loop_start")
def _bot_loop_start(impl: Callable[..., Any], flag: str) -> Callable[..., Any]:
    def bot_loop_start(self: Any, current_time: datetime, **kwargs: Any) -> None:
        if flag not in self.__dict__:
            self._ks_loop()
        with _Reentry(self, flag):
            impl(self, current_time=current_time, **kwargs)

    return bot_loop_start


@_hook("confirm_trade_entry")
def _confirm_trade_entry(impl: Callable[..., Any], flag: str) -> Callable[..., Any]:
    def confirm_trade_entry(
        self: Any,
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
        if flag not in self.__dict__:
            if not self._ks_gate(pair, f"entry {side} {pair} amount={amount:g}", current_time):
                return False
        with _Reentry(self, flag):
            return impl(
                self,
                pair=pair,
                order_type=order_type,
                amount=amount,
                rate=rate,
                time_in_force=time_in_force,
                current_time=current_time,
                entry_tag=entry_tag,
                side=side,
                **kwargs,
            )

    return confirm_trade_entry


@_hook("confirm_trade_exit")
def _confirm_trade_exit(impl: Callable[..., Any], flag: str) -> Callable[..., Any]:
    def confirm_trade_exit(
        self: Any,
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
        if flag not in self.__dict__:
            self._ks_exit(pair, exit_reason, current_time)
        with _Reentry(self, flag):
            return impl(
                self,
                pair=pair,
                trade=trade,
                order_type=order_type,
                amount=amount,
                rate=rate,
                time_in_force=time_in_force,
                exit_reason=exit_reason,
                current_time=current_time,
                **kwargs,
            )

    return confirm_trade_exit


@_hook("adjust_trade_position")
def _adjust_trade_position(impl: Callable[..., Any], flag: str) -> Callable[..., Any]:
    def adjust_trade_position(self: Any, trade: Any, current_time: datetime, **kwargs: Any):
        if flag in self.__dict__:
            return impl(self, trade=trade, current_time=current_time, **kwargs)
        with _Reentry(self, flag):
            result = impl(self, trade=trade, current_time=current_time, **kwargs)
        stake = result[0] if isinstance(result, tuple) else result
        if stake is None or stake <= 0:
            return result  # nothing, or a reduction: never blocked
        allowed = self._ks_gate(trade.pair, f"increase {trade.pair} stake={stake:g}", current_time)
        return result if allowed else None

    return adjust_trade_position


@_hook("order_filled")
def _order_filled(impl: Callable[..., Any], flag: str) -> Callable[..., Any]:
    def order_filled(
        self: Any, pair: str, trade: Any, order: Any, current_time: datetime, **kwargs: Any
    ) -> None:
        if flag not in self.__dict__:
            self._ks_fill(pair, trade, order)
        with _Reentry(self, flag):
            impl(self, pair=pair, trade=trade, order=order, current_time=current_time, **kwargs)

    return order_filled


def _ms(t: Any) -> int:
    """ms since the epoch of a datetime or pandas Timestamp (0 when it has none); cheaper
    than formatting it (a Timestamp's strftime costs tens of µs)."""
    try:
        return int(t.timestamp() * 1000)
    except Exception:
        return 0
