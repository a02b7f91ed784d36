"""Choosing and owning audit loggers: the native one, or the pure-Python fallback.

`AuditLogger` is the compiled class itself (no Python wrapper on the hot path). When the
extension cannot be imported, `AuditLogger` is the pure-Python `PyAuditLogger`, with a loud
warning: same API, same file format, much slower.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import warnings
from pathlib import Path
from typing import Any, Optional, Union

from . import pybackend
from .pybackend import PyAuditLogger

log = logging.getLogger("killswitch_audit")

try:
    from . import _native

    NATIVE_AVAILABLE = True
    NATIVE_IMPORT_ERROR: Optional[BaseException] = None
    AuditLogger: Any = _native.AuditLogger
except ImportError as exc:  # pragma: no cover - exercised by the fallback test in a subprocess
    _native = None  # type: ignore[assignment]
    NATIVE_AVAILABLE = False
    NATIVE_IMPORT_ERROR = exc
    AuditLogger = PyAuditLogger
    warnings.warn(
        f"killswitch_audit: the native extension could not be loaded ({exc}); "
        "using the pure-Python fallback backend. Audit calls are ~50x slower. "
        "Reinstall the wheel for this platform.",
        RuntimeWarning,
        stacklevel=2,
    )
    log.error("native extension unavailable, using the Python backend: %s", exc)

AnyAuditLogger = Union["_native.AuditLogger", PyAuditLogger]  # type: ignore[name-defined]


def _hmac_key(env_name: Optional[str]) -> Optional[bytes]:
    if not env_name:
        return None
    value = os.environ.get(env_name)
    if not value:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        from .errors import ConfigError

        raise ConfigError(
            f"environment variable {env_name} must hold a hex HMAC key",
            key="audit_system.hmac_key_env",
        ) from None


def open_audit_logger(
    config: Any = None, directory: Union[str, Path, None] = None
) -> AnyAuditLogger:
    """Opens a logger as `config` (an `AuditConfig`; None: the default config) says.

    `backend: python` (or a missing extension) gives the fallback backend.
    """
    from .config import load_config

    cfg = config if config is not None else load_config()
    a = cfg.audit_system
    target = Path(directory if directory is not None else a.directory)
    common = dict(
        buffer_size=a.buffer_size,
        emergency_buffer_size=a.emergency_buffer_size,
        flush_interval_ms=a.flush_interval_ms,
        segment_size_mb=a.segment_size_mb,
        overflow_policy=a.overflow_policy,
        durable_kill_switch=a.durable_kill_switch,
        hmac_key=_hmac_key(a.hmac_key_env),
    )
    if a.backend == "python" or not NATIVE_AVAILABLE:
        return PyAuditLogger(target, **common)
    return _native.AuditLogger(
        target,
        emergency_poll_us=a.emergency_poll_us,
        idle_strategy=a.idle_strategy,
        spin_limit_us=a.spin_limit_us,
        clock_check_interval_s=cfg.clock.check_interval_s,
        file_mode=a.file_mode,
        dir_mode=a.dir_mode,
        **common,
    )


_global_lock = threading.Lock()
_global_logger: Optional[AnyAuditLogger] = None


def get_global_audit_logger() -> AnyAuditLogger:
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
    if _native is not None:
        _native._close_all()
    pybackend._close_all_at_exit()


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
if _native is not None:
    os.register_at_fork(after_in_child=_native._after_fork_in_child)
if not os.environ.get("KILLSWITCH_AUDIT_NO_SIGTERM"):
    install_sigterm_handler()
