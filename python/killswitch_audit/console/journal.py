"""The console's own audit log: every login (and failed login), refusal and four-eyes step,
with the authenticated operator, as USER records each carrying a TEXT `console:{json}` (the
control plane's journal already holds the halts and resets themselves, with their operators).

A hash-chained audit log like any other (`killswitch-audit verify|dump DIR`), opened once for
the console's lifetime (its directory lock keeps a second console off it)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from ..format import RecordKind, encode_text_chunks

log = logging.getLogger("killswitch_audit.console")
TEXT_PREFIX = "console:"


class ConsoleJournal:
    def __init__(self, directory: Path):
        from .. import _native

        self.directory = Path(directory)
        self._log = _native.AuditLogger(
            str(self.directory),
            buffer_size=1024,
            emergency_buffer_size=64,
            segment_size_mb=1,
            flush_interval_ms=1.0,
            file_mode=0o600,
            dir_mode=0o700,
        )
        self._lock = threading.Lock()
        self.failures = 0

    def write(self, event: dict[str, Any]) -> bool:
        """Audits `event` (False, logged and counted, when the log refused it)."""
        text = TEXT_PREFIX + json.dumps(event, sort_keys=True, default=str)
        with self._lock:
            seq = self._log.audit(int(RecordKind.USER), 0, 0, 0, 0, 0, True)
            if seq < 0:
                self.failures += 1
                log.error("console audit log %s refused an event: %s", self.directory, text)
                return False
            for idx, a, b, sym in encode_text_chunks(text):
                self._log.audit(int(RecordKind.TEXT), idx, sym, a, b, seq, True)
        return True

    def close(self) -> None:
        with self._lock:
            self._log.flush(2.0, durable=True)
            self._log.close()


def read_events(directory: Path) -> list[dict[str, Any]]:
    """The console events of a console audit log, oldest first (tests, tools)."""
    from ..format import decode_text_chunk
    from ..reader import read_audit_log

    texts: dict[int, list[tuple[int, str]]] = {}
    for r in read_audit_log(directory):
        if r.kind == RecordKind.TEXT:
            texts.setdefault(r.c, []).append((r.code, decode_text_chunk(r.a, r.b, r.symbol_id)))
    out = []
    for seq in sorted(texts):
        t = "".join(c for _, c in sorted(texts[seq]))
        if t.startswith(TEXT_PREFIX):
            out.append({**json.loads(t[len(TEXT_PREFIX) :]), "seq": seq})
    return out
