"""Helpers shared by the format and reader tests: records and segment files built byte by byte
(independently of any writer), and reading them back."""

from __future__ import annotations

from pathlib import Path

from killswitch_audit.format import (
    EMPTY_CHAIN,
    RECORD_SIZE,
    SEG_FLAG_CLOSED,
    RecordKind,
    SegmentHeader,
    chain_digest,
    pack_header,
    pack_record,
)

T0 = 1_790_000_000_000_000_000  # 2026-09-21, ns


def rec(seq, kind=RecordKind.TRADE, flags=0, code=0, a=0, b=0, c=0, symbol_id=0, tid=1234):
    return pack_record(
        seq, T0 + seq * 1000, 5_000 + seq, kind, flags, code, tid, a, b, c, symbol_id
    )


def trades(first, count):
    return [rec(s, a=s, b=10_000 + s, c=s, symbol_id=s % 97) for s in range(first, first + count)]


def write_segment(
    path,
    records,
    *,
    index=0,
    committed=None,
    capacity=None,
    closed=True,
    prev_chain=EMPTY_CHAIN,
    chain_records=None,
    tail=(),
    key=None,
):
    """A segment file as a writer would leave it: header, `records` (counted in `committed`
    unless told otherwise), then `tail` (raw 64-byte slots after them), zero-filled up to
    `capacity` slots. Returns the final chain value over `records`."""
    data = b"".join(records)
    n = len(records)
    committed = n if committed is None else committed
    chain_records = committed if chain_records is None else chain_records
    capacity = max(n + len(tail), 16) if capacity is None else capacity
    covered = data[: chain_records * RECORD_SIZE]
    header = SegmentHeader(
        segment_index=index,
        first_seq=0,
        created_wall_ns=T0,
        pid=4242,
        flags=(SEG_FLAG_CLOSED if closed else 0) | (2 if key else 0),
        capacity=capacity,
        committed=committed,
        chain_records=chain_records,
        chain_head=chain_digest(prev_chain, index, covered, key),
        prev_chain=prev_chain,
        host="test-host",
    )
    body = data + b"".join(tail)
    body += bytes(capacity * RECORD_SIZE - len(body))
    Path(path).write_bytes(pack_header(header) + body)
    return chain_digest(prev_chain, index, data, key)
