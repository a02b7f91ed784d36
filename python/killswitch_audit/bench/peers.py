"""The peers of the per-call comparison: `_Peers` opens every peer's sink (native logger,
stalled native logger, direct engine, stdlib logging queue, `os.write`) under one scratch
directory and closes them all; `_fill_main_ring` fills a paused logger's main ring for the
stalled scenario.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import queue
import time
from pathlib import Path
from typing import Any, Callable, Optional

log = logging.getLogger("killswitch_audit.bench")


class _Peers:
    """Opens every peer's sink under one scratch directory and closes them all."""

    def __init__(self, root: Path, with_direct: bool, with_logging: bool) -> None:
        from .. import _native

        self.root = root
        self.with_direct = with_direct
        self.with_logging = with_logging
        self.native = _native.AuditLogger(root / "native")
        self.stalled = _native.AuditLogger(root / "native_stalled")
        self.noop = _native.noop_audit
        self.direct: Any = (
            _native.AuditLogger(root / "direct", engine="direct") if with_direct else None
        )
        self.listener: Optional[logging.handlers.QueueListener] = None
        self.std_logger: Optional[logging.Logger] = None
        self.fd = os.open(root / "os_write.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def start_threaded(self) -> None:
        """Opens the peers that run Python threads (the logging listener). They start only
        after the native peers were measured: a Python thread that wakes up takes the GIL
        from the measuring thread, which would charge the native calls for the peers'
        design."""
        if self.with_logging:
            q: queue.SimpleQueue = queue.SimpleQueue()
            self.file_handler = logging.FileHandler(self.root / "logging.log")
            self.file_handler.setFormatter(logging.Formatter("%(created).6f %(message)s"))
            self.listener = logging.handlers.QueueListener(q, self.file_handler)
            self.listener.start()
            lg = logging.getLogger("killswitch_audit.bench.peer")
            lg.propagate = False
            lg.handlers[:] = [logging.handlers.QueueHandler(q)]
            lg.setLevel(logging.INFO)
            self.std_logger = lg

    def logging_call(self) -> Callable[..., Any]:
        lg = self.std_logger
        assert lg is not None
        warning = lg.warning

        def call(reason: int, symbol: int, position: int, pnl: int) -> None:
            warning(
                "kill_switch reason=%d symbol=%d position=%d pnl=%d", reason, symbol, position, pnl
            )

        return call

    def os_write_call(self) -> Callable[..., Any]:
        from ..format import RECORD_STRUCT

        pack = RECORD_STRUCT.pack
        write = os.write
        fd = self.fd
        mono = time.monotonic_ns
        wall = time.time_ns
        counter = iter(range(1 << 62))

        def call(reason: int, symbol: int, position: int, pnl: int) -> None:
            write(
                fd,
                pack(next(counter), wall(), mono(), 1, 2, reason, 0, position, pnl, 0, symbol, 0),
            )

        return call

    def close(self) -> None:
        for lg in (self.native, self.stalled):
            try:
                lg._set_paused(False)
                lg.close()
            except Exception:  # pragma: no cover - best effort at teardown
                log.exception("closing a native logger")
        if self.direct is not None:
            self.direct.close()
        if self.listener is not None:
            self.listener.stop()
            self.file_handler.close()
        os.close(self.fd)


def _fill_main_ring(logger: Any, at_least: int) -> int:
    """With the flusher paused, audits trades until the main ring holds `at_least` records
    (or is full); returns the ring's fill."""
    stats = logger.get_stats()
    cap = stats["main_ring_capacity"]
    if cap < at_least:
        raise ValueError(f"main ring of {cap} records cannot hold {at_least}")
    trade = logger.audit_trade
    # As many as there is room for, and a few more: the ring is full, the extra are dropped
    # (counted, GAP-recorded once the flusher resumes).
    for i in range(cap - stats["main_ring_len"] + 64):
        trade(7, 100, 10_125, i)
    return logger.get_stats()["main_ring_len"]
