"""Helpers shared by the kill-switch tests (test_killswitch_*.py): loggers in a temporary
directory, switches on them, the records and TEXT payloads read back."""

from __future__ import annotations

from killswitch_audit import (
    RecordKind,
    default_config,
    read_audit_log,
)
from killswitch_audit.killswitch import (
    KillSwitch,
    Scope,
)

S = Scope(strategy="mm")


ORDER_MM = Scope(account="A1", strategy="mm", symbol_id=7, venue="XEUR")


ORDER_ARB = Scope(account="A1", strategy="arb", symbol_id=7, venue="XEUR")


def make_ks(logger, config=None, **kw):
    return KillSwitch(logger, latency_monitor=False, config=config or default_config(), **kw)


def records(logger, kind=None):
    assert logger.flush(5.0)
    recs = list(read_audit_log(logger.directory))
    if kind is not None:
        recs = [r for r in recs if r.kind == kind]
    return sorted(recs, key=lambda r: r.seq)


def texts(logger):
    """{attached seq: text} of every TEXT record."""
    chunks: dict[int, dict[int, str]] = {}
    for r in records(logger, RecordKind.TEXT):
        chunks.setdefault(r.c, {})[r.code] = r.text
    return {c: "".join(v[i] for i in sorted(v)) for c, v in chunks.items()}
