"""Opening and owning audit loggers.

`AuditLogger` is the compiled class itself (no Python wrapper on the hot path). Its engine is
chosen by config (`audit_system.engine`): `rings` (default: the caller pushes into a ring,
Rust threads write the file) or `direct` (the rollback engine: each call writes its record
itself with `pwrite` under a mutex; no rings, no threads, a few µs a call). Both write the
same files, read and verified by the same reader. There is no pure-Python writer: without the
compiled extension the package does not import (see `__init__`).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any, Optional, Union

from . import _native

log = logging.getLogger("killswitch_audit")

#: Always True: the package does not import without its compiled extension. Kept for code
#: written when a pure-Python fallback existed.
NATIVE_AVAILABLE = True
AuditLogger = _native.AuditLogger


def open_audit_logger(
    config: Any = None, directory: Union[str, Path, None] = None
) -> _native.AuditLogger:
    """Opens a logger as `config` (an `AuditConfig`; None: the default config) says,
    with the engine it names (`audit_system.engine`: `rings` or `direct`)."""
    from .config import load_config

    cfg = config if config is not None else load_config()
    a = cfg.audit_system
    target = Path(directory if directory is not None else a.directory)
    return _native.AuditLogger(
        target, **a.logger_kwargs(), clock_check_interval_s=cfg.clock.check_interval_s
    )


_global_lock = threading.Lock()
_global_logger: Optional[_native.AuditLogger] = None


def get_global_audit_logger() -> _native.AuditLogger:
    """The process-wide logger, opened on first use from `$KILLSWITCH_AUDIT_CONFIG` (or the
    packaged default config)."""
    global _global_logger
    with _global_lock:
        if _global_logger is None or _global_logger.closed:
            _global_logger = open_audit_logger()
        return _global_logger


def audit_kill_switch(
    reason_code: int, symbol_id: int = 0, position_size: int = 0, pnl_cents: int = 0
) -> int:
    """`get_global_audit_logger().audit_kill_switch(...)`."""
    return get_global_audit_logger().audit_kill_switch(
        int(reason_code), symbol_id, position_size, pnl_cents
    )


def audit_trade(symbol_id: int, quantity: int, price_cents: int, order_id: int = 0) -> int:
    """`get_global_audit_logger().audit_trade(...)`."""
    return get_global_audit_logger().audit_trade(symbol_id, quantity, price_cents, order_id)


def close_all() -> None:
    """Drains and closes every open logger of the process (also run at interpreter exit)."""
    _native._close_all()


def _on_sigterm(signum: int, frame: Any) -> None:
    close_all()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def install_sigterm_handler() -> bool:
    """Makes SIGTERM drain every logger before the process dies. Installed at import when
    SIGTERM still has its default action and this is the main thread (set
    `KILLSWITCH_AUDIT_NO_SIGTERM=1` to opt out). Returns True when installed."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True


atexit.register(close_all)
os.register_at_fork(after_in_child=_native._after_fork_in_child)
if not os.environ.get("KILLSWITCH_AUDIT_NO_SIGTERM"):
    install_sigterm_handler()
