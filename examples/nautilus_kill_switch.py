"""The kill switch inside a NautilusTrader backtest (pip install 'killswitch-audit[nautilus]').

    python examples/nautilus_kill_switch.py [AUDIT_DIR]

A strategy buys into a falling market; a LossLimit on its scope halts it. The kill switch
cancels its resting order, denies every order it sends after the halt (Nautilus's own
OrderDenied events), and the audit log shows the halt, the stop steps and each denial.
In a live TradingNode the wiring is the same line, `install_kill_switch(node, ks)`, before
`node.run()`; with a control plane configured (`control:` in the config, or
$KILLSWITCH_AUDIT_CONTROL), `killswitch-audit halt --operator ... --reason ...` stops it.
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from datetime import timedelta

from killswitch_audit import AuditLogger, KillSwitch, LossLimit, Scope, read_audit_log
from killswitch_audit.integrations.nautilus import install_kill_switch
from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
from nautilus_trader.config import LoggingConfig, StrategyConfig
from nautilus_trader.model.currencies import USD
from nautilus_trader.model.data import Bar, BarType
from nautilus_trader.model.enums import AccountType, OmsType, OrderSide
from nautilus_trader.model.identifiers import TraderId, Venue
from nautilus_trader.model.objects import Money, Quantity
from nautilus_trader.test_kit.providers import TestInstrumentProvider
from nautilus_trader.trading.strategy import Strategy

BAR_TYPE = BarType.from_str("AUD/USD.SIM-1-MINUTE-LAST-EXTERNAL")


class BuyTheDip(Strategy):
    """Buys 10k every 5th bar and keeps a limit buy 100 pips under the market."""

    def __init__(self, instrument):
        super().__init__(StrategyConfig(order_id_tag="001"))
        self.instrument = instrument
        self.bars = 0

    def on_start(self):
        self.subscribe_bars(BAR_TYPE)

    def on_bar(self, bar):
        self.bars += 1
        i = self.instrument
        if self.bars % 5 == 1:
            self.submit_order(self.order_factory.market(i.id, OrderSide.BUY, i.make_qty(10_000)))
        if not self.cache.orders_open(strategy_id=self.id):
            price = i.make_price(float(bar.close) - 0.01)
            self.submit_order(
                self.order_factory.limit(i.id, OrderSide.BUY, i.make_qty(10_000), price)
            )


def falling_bars(instrument, n=300):
    t0, p, bars = 1_704_153_600_000_000_000, 0.70000, []
    for k in range(n):
        c = p - 0.0002
        ts = t0 + k * 60_000_000_000
        bars.append(
            Bar(
                BAR_TYPE,
                instrument.make_price(p),
                instrument.make_price(p + 0.00005),
                instrument.make_price(c - 0.00005),
                instrument.make_price(c),
                Quantity.from_int(1_000_000),
                ts,
                ts,
            )
        )
        p = c
    return bars


def main() -> None:
    audit_dir = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="nautilus-ks-")
    engine = BacktestEngine(
        BacktestEngineConfig(trader_id=TraderId("TRADER-001"), logging=LoggingConfig("ERROR"))
    )
    engine.add_venue(
        venue=Venue("SIM"),
        oms_type=OmsType.NETTING,
        account_type=AccountType.MARGIN,
        base_currency=USD,
        starting_balances=[Money(1_000_000, USD)],
    )
    instrument = TestInstrumentProvider.default_fx_ccy("AUD/USD")
    engine.add_instrument(instrument)
    engine.add_data(falling_bars(instrument))
    engine.add_strategy(BuyTheDip(instrument))

    # the kill switch: a $500 loss limit on this strategy's scope
    logger = AuditLogger(audit_dir, segment_size_mb=1)
    ks = KillSwitch(logger, triggers=[LossLimit(50_000, scope=Scope(strategy="BuyTheDip-001"))])
    guard = install_kill_switch(engine, ks, pump_interval=timedelta(minutes=1))

    engine.run()
    engine.dispose()
    logger.close()
    print("kill switch:", ks.stats()["restricted"], "| actor:", guard.stats())
    kinds = Counter(r.kind.name for r in read_audit_log(audit_dir))
    print("audit log", audit_dir, dict(kinds))


if __name__ == "__main__":
    main()
