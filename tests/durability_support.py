"""Helpers shared by the durability tests (test_durability_*.py): opening loggers, running
child writers, reading segments and GAP records back."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from killswitch_audit import (
    NATIVE_AVAILABLE,
    RecordKind,
)
from killswitch_audit.format import (
    CRC_SPAN,
    RECORD_BODY_STRUCT,
    crc32c,
)

if NATIVE_AVAILABLE:
    from killswitch_audit import _native


needs_native = pytest.mark.skipif(not NATIVE_AVAILABLE, reason="native extension not built")


#: The ring engine (default) and the direct engine (`audit_system.engine: direct`, the
#: rollback path: each call writes its record itself), held to the same guarantees.
ENGINES = [
    pytest.param("rings", marks=needs_native, id="rings"),
    pytest.param("direct", marks=needs_native, id="direct"),
]


def make_logger(engine: str, directory, **kw):
    return _native.AuditLogger(directory, engine=engine, **kw)


def run_child(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter (argv[1:] = args); returns the completed process."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def record_is_valid(r) -> bool:
    """Re-encodes a record as read and checks its CRC-32C: the reader never returns a record
    whose bytes fail their checksum."""
    body = RECORD_BODY_STRUCT.pack(
        r.seq,
        r.wall_ns,
        r.mono_ns,
        int(r.kind),
        r.flags,
        r.code,
        r.thread_id,
        r.a,
        r.b,
        r.c,
        r.symbol_id,
    )
    return crc32c(body[:CRC_SPAN]) == r.crc32c


def gap_records(records, ring: int | None = None):
    return [r for r in records if r.kind == RecordKind.GAP and (ring is None or r.code == ring)]
