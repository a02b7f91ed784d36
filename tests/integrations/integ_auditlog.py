"""Reading an audit log back in the integration tests: records by kind, TEXTs joined."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from killswitch_audit import RecordKind, read_audit_log
from killswitch_audit.format import decode_text_chunk


class AuditLog:
    """Every record of a closed log directory, read with `read_audit_log`."""

    def __init__(self, directory: Path):
        self.records = sorted(read_audit_log(directory), key=lambda r: r.seq)
        chunks: dict[int, list[tuple[int, str]]] = defaultdict(list)
        for r in self.records:
            if r.kind == RecordKind.TEXT:
                chunks[r.c].append((r.code, decode_text_chunk(r.a, r.b, r.symbol_id)))
        #: seq -> the text attached to that record
        self.texts = {seq: "".join(t for _, t in sorted(parts)) for seq, parts in chunks.items()}

    def of(self, kind: RecordKind) -> list:
        return [r for r in self.records if r.kind == kind]

    def text(self, record) -> str:
        return self.texts.get(record.seq, "")
