"""killswitch-audit: a kill switch for Python trading orchestrators, with a lock-free Rust
audit trail and an HdrHistogram latency monitor.

    from killswitch_audit import AuditLogger, KillSwitchReason, read_audit_log

    with AuditLogger("audit_logs") as log:
        log.audit_trade(symbol_id=7, quantity=100, price_cents=10_125)
        log.audit_kill_switch(KillSwitchReason.DAILY_LOSS_LIMIT, 7, 100, -2_500_000)
    for record in read_audit_log("audit_logs"):
        print(record)
"""

from __future__ import annotations

from . import _load_native  # first: one clear ImportError without the extension
from .config import AuditConfig, default_config, load_config
from .errors import (
    AuditLogCorrupt,
    AuditLoggerClosed,
    ConfigError,
    KillSwitchAuditError,
    ResetRefused,
)
from .format import KillSwitchReason, Record, RecordKind, Ring, TradingState
from .killswitch import (
    Drawdown,
    KillSwitch,
    LossLimit,
    MessageRate,
    PositionLimit,
    RepeatedExecutions,
    Scope,
    StopReport,
)
from .logger import (
    NATIVE_AVAILABLE,
    AuditLogger,
    audit_kill_switch,
    audit_trade,
    close_all,
    get_global_audit_logger,
    install_sigterm_handler,
    open_audit_logger,
)
from .monitor import (
    Alert,
    LatencyMonitor,
    RingProbe,
    get_global_latency_monitor,
    measure_kill_switch_latency,
    serve_metrics,
)
from .reader import export_chain_head, read_audit_log, verify_audit_log

__version__ = "0.1.0"

# What users need: every name the README, docs and examples use. The rest stays importable
# (killswitch_audit.NATIVE_AVAILABLE, .monitor.RingProbe, ...) without being advertised;
# the TypedDicts of returned dicts are in killswitch_audit.types.
__all__ = [
    "Alert",
    "AuditConfig",
    "AuditLogCorrupt",
    "AuditLogger",
    "AuditLoggerClosed",
    "ConfigError",
    "Drawdown",
    "KillSwitch",
    "KillSwitchAuditError",
    "KillSwitchReason",
    "LatencyMonitor",
    "LossLimit",
    "MessageRate",
    "PositionLimit",
    "Record",
    "RecordKind",
    "RepeatedExecutions",
    "ResetRefused",
    "Ring",
    "Scope",
    "StopReport",
    "TradingState",
    "audit_kill_switch",
    "audit_trade",
    "close_all",
    "export_chain_head",
    "get_global_audit_logger",
    "load_config",
    "open_audit_logger",
    "read_audit_log",
    "serve_metrics",
    "verify_audit_log",
]
