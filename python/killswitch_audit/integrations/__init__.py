"""Drop-in integrations of the kill switch into trading platforms (docs/INTEGRATIONS.md).

Each platform's module is imported only when asked for, so `import killswitch_audit` never
pulls in a platform (they are heavy, optional extras):

- `killswitch_audit.integrations.nautilus` (extra `[nautilus]`): `install_kill_switch(engine_or
  node, ks)` adds a `KillSwitchActor` to a NautilusTrader BacktestEngine / TradingNode that
  gates every order at the execution engine's door, feeds the triggers from Nautilus events,
  cancels (optionally flattens) on a halt, mirrors the state into Nautilus's TradingState and
  stops the node when a halt covers it.
- `killswitch_audit.integrations.freqtrade` (extra `[freqtrade]`): `KillSwitchMixin` for a
  freqtrade `IStrategy`: entries denied while halted/reducing, exits always allowed, P&L and
  fills fed to the triggers, every decision audited.

Shared here: the symbol id of an instrument name and the audit of one gate decision.
"""

from __future__ import annotations

import hashlib
import importlib
from typing import Any

from ..format import RecordKind, encode_text_chunks

__all__ = [
    "GATE_CHECK",
    "OUTCOME_ALLOWED",
    "OUTCOME_DENIED",
    "audit_decision",
    "audit_text",
    "symbol_id_for",
]

#: `code` of the RISK_CHECK records an integration writes for one gate decision
GATE_CHECK = 1
#: `c` of those records
OUTCOME_ALLOWED, OUTCOME_DENIED = 0, 1

_K_RISK_CHECK = int(RecordKind.RISK_CHECK)
_K_TEXT = int(RecordKind.TEXT)
_SUBMODULES = ("nautilus", "freqtrade")


def symbol_id_for(name: str) -> int:
    """The default `Scope.symbol_id` of an instrument or pair name (e.g. ``AUD/USD.SIM``,
    ``BTC/USDT``): the first 4 bytes (little-endian) of BLAKE2b over its UTF-8 text, never 0.
    Stable across processes and hosts, so an operator can halt one instrument with
    ``killswitch-audit halt --scope symbol_id=N``. Pass your own mapping to the integration
    when your firm already numbers its instruments."""
    if not isinstance(name, str):
        raise TypeError(f"instrument name must be a str, not {type(name).__name__}")
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=4).digest()
    return int.from_bytes(digest, "little") or 1


def audit_decision(
    ks: Any, allowed: bool, symbol_id: int, state: int, text: str, when_ms: int = 0
) -> int:
    """Writes one gate decision of an integration: RISK_CHECK with `code` GATE_CHECK,
    `symbol_id`, `a` the trading state the order's scope was under (0 ACTIVE, 1 REDUCING,
    2 HALTED), `b` the platform's own time of the decision in ms since the epoch (simulated
    time in a backtest; 0: unknown; the record's own timestamps are wall and monotonic
    time), `c` the outcome (0 allowed, 1 denied), and a TEXT attached to it naming the
    order (platform, side, order id or pair). Main ring: a runaway strategy's denials never crowd
    the kill-switch records. Returns the record's seq (-1: not written, counted by the
    logger as dropped)."""
    core = ks._core  # the switch's native half writes to the switch's own logger
    seq = core.audit(
        _K_RISK_CHECK,
        GATE_CHECK,
        symbol_id,
        state,
        when_ms,
        OUTCOME_ALLOWED if allowed else OUTCOME_DENIED,
        False,
    )
    if seq >= 0 and text:
        audit_text(ks, seq, text)
    return seq


def audit_text(ks: Any, seq: int, text: str) -> None:
    """TEXT records attached to record `seq`, on the main ring (the core's own `text` writes
    to the emergency ring and wakes the flusher per record: for kill-switch evidence)."""
    audit = ks._core.audit
    for idx, a, b, sym in encode_text_chunks(text[:400]):
        audit(_K_TEXT, idx, sym, a, b, seq, False)


def __getattr__(name: str) -> Any:
    # `from killswitch_audit.integrations import nautilus` works without importing both
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
