"""A trading orchestrator with the kill switch wired in the way the seed did it.

The seed's orchestrator had::

    def emergency_stop(self, reason, symbol_id, position_size):
        audit_kill_switch(reason, symbol_id, position_size, self.pnl_cents)
        self.stop_live_trading()

Here the same method delegates to `KillSwitch.emergency_stop`, which flips the order gate
first, audits through the emergency ring, then runs the registered stop handlers
(`cancel_all_orders`, `stop_live_trading`, `flatten_positions`), each isolated and timed.
Orders go through `KillSwitch.allows` before they are sent; P&L, positions, orders and fills
feed the configured triggers.

Run it:

    python examples/orchestrator.py                 # temp directory, ~2 s
    python examples/orchestrator.py --dir ./audit_logs --seconds 5

and afterwards `killswitch-audit dump DIR --kind KILL_SWITCH STATE_CHANGE STOP_STEP`.
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import time
from typing import Optional

from killswitch_audit import KillSwitchReason, TradingState, load_config, open_audit_logger
from killswitch_audit.killswitch import KillSwitch, LossLimit, PositionLimit, Scope, StopReport

log = logging.getLogger("orchestrator")


class Orchestrator:
    """A toy orchestrator: one account, one strategy, a few symbols, a simulated venue."""

    def __init__(self, audit_dir: str, config_path: Optional[str] = None):
        self.config = load_config(config_path)
        self.audit = open_audit_logger(self.config, directory=audit_dir)
        # None: the global latency monitor; the switch restores any halt left in audit_dir
        self.kill_switch = KillSwitch(self.audit, None, self.config)
        if not self.kill_switch.triggers:  # the packaged config enables none: add two
            self.kill_switch.add_trigger(LossLimit(daily_loss_cents=500_000))
            self.kill_switch.add_trigger(PositionLimit(max_position=50_000))
        # stop handlers run in this order; they must be idempotent (a second trigger while
        # halted runs them again)
        self.kill_switch.add_stop_handler(self.announce_stop)
        self.kill_switch.add_stop_handler(self.cancel_all_orders)
        self.kill_switch.add_stop_handler(self.stop_live_trading)
        self.kill_switch.add_stop_handler(self.flatten_positions)
        self.live = self.kill_switch.trading_state() == TradingState.ACTIVE
        self.pnl_cents = 0
        self.positions: dict[int, int] = {}
        self.working_orders: dict[int, tuple[int, int]] = {}
        self.next_order_id = 1

    # -------------------------------------------------------------- the seed's interface

    def emergency_stop(self, reason, symbol_id: int = 0, position_size: int = 0) -> StopReport:
        """The seed's method: now the kill switch's whole stop path. Never raises. Whoever
        trips the switch (this method, a trigger, an operator), `announce_stop` prints it."""
        return self.kill_switch.emergency_stop(reason, symbol_id, position_size, self.pnl_cents)

    def announce_stop(self) -> None:
        """The first stop handler: says that trading stopped, and why, for every stop."""
        tripped = [t.describe() for t in self.kill_switch.triggers if t.tripped]
        print(
            f"EMERGENCY STOP (P&L {self.pnl_cents / 100:,.2f}): "
            + (f"tripped {', '.join(tripped)}" if tripped else "stopped by hand")
            + "; the order gate denies every new order from here on"
        )

    def stop_live_trading(self) -> None:
        """The seed's stop handler: no new strategy decisions after this."""
        self.live = False

    def cancel_all_orders(self) -> None:
        for order_id, (symbol_id, qty) in list(self.working_orders.items()):
            self.audit.audit(4, 0, symbol_id, qty, 0, order_id)  # ORDER_CANCELLED
        self.working_orders.clear()

    def flatten_positions(self) -> None:
        """Reducing orders still pass the gate (REDUCING / risk-reducing); a real system
        would send them here. This toy just records the intent."""
        log.warning("flatten: %d open positions", sum(1 for q in self.positions.values() if q))

    # -------------------------------------------------------------- the trading loop

    def send_order(self, symbol_id: int, qty: int, price_cents: int) -> bool:
        scope = Scope(account="ACC1", strategy="demo", symbol_id=symbol_id, venue="SIM")
        reduces = abs(self.positions.get(symbol_id, 0) + qty) < abs(
            self.positions.get(symbol_id, 0)
        )
        if not self.kill_switch.allows(scope, reduces):
            return False
        order_id = self.next_order_id
        self.next_order_id += 1
        self.audit.audit(3, 0, symbol_id, qty, price_cents, order_id)  # ORDER_SENT
        self.kill_switch.on_order()
        self.working_orders[order_id] = (symbol_id, qty)
        # the simulated venue fills at once
        del self.working_orders[order_id]
        self.audit.audit_trade(symbol_id, qty, price_cents, order_id)
        self.kill_switch.on_fill(symbol_id, qty)
        pos = self.positions.get(symbol_id, 0) + qty
        self.positions[symbol_id] = pos
        self.kill_switch.on_position(pos, symbol_id)
        return True

    def run(self, seconds: float, rate: int = 20_000, seed: int = 1) -> None:
        rng = random.Random(seed)
        end = time.monotonic() + seconds
        per_ms = max(1, rate // 1000)
        while time.monotonic() < end:
            tick_end = time.monotonic() + 0.001
            if self.live:
                for _ in range(per_ms):
                    self.send_order(rng.randrange(1, 5), rng.choice((-100, 100)), 10_000)
            if not self.live:
                break  # halted: orders are blocked, and the P&L below would be fiction
            self.pnl_cents += int(rng.gauss(-900, 2_000))  # a bad day
            self.kill_switch.on_pnl(self.pnl_cents)
            time.sleep(max(0.0, tick_end - time.monotonic()))

    def close(self) -> None:
        self.audit.close()


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", help="audit directory (default: a temporary one)")
    ap.add_argument("--config", help="YAML config (default: $KILLSWITCH_AUDIT_CONFIG or packaged)")
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    directory = args.dir or tempfile.mkdtemp(prefix="orchestrator-audit-")
    orch = Orchestrator(directory, args.config)
    try:
        if not orch.live:
            print(f"restored a halt from {directory}: {orch.kill_switch.halted_scopes}")
            print("reset it with KillSwitch.reset(operator, note) before trading")
            return 1
        orch.run(args.seconds)
        report = orch.kill_switch.last_report
        if orch.kill_switch.halted and report is not None:
            print(
                f"halted: reason {KillSwitchReason(report.reason).name}, gate closed "
                f"{report.trigger_to_block_ns / 1e3:.1f} us after the trigger, handlers done "
                f"after {report.trigger_to_handlers_done_ns / 1e3:.1f} us, records in the file "
                f"before the call returned ({'ok' if report.ok else report.errors}); "
                "durable=None means no fdatasync wait was asked (kill_switch.wait_durable_ms: 0): "
                "the halt survives a crash of this process, a power loss only once synced"
            )
        else:
            # an operator stops the desk by hand
            orch.emergency_stop("MANUAL")
        state = orch.kill_switch.trading_state()
        print(f"state {state.name}, P&L {orch.pnl_cents / 100:,.2f}, audit log in {directory}")
        print(f"next: killswitch-audit dump {directory} --kind KILL_SWITCH STATE_CHANGE STOP_STEP")
    finally:
        orch.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
