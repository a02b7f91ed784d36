"""Encoders and decoders of the on-disk structures for tests and tools (reading is the
Rust core's job): the CRC-32C reference, records and TEXT chunks, the segment header,
stats.bin. `Record` itself is the native class."""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass
from typing import Any, Optional, Union

from .. import _native as _native_module  # type: ignore[attr-defined]
from ..errors import AuditLogCorrupt
from .enums import kind_of
from .layout import (
    CRC_SPAN,
    CRC_STRUCT,
    HDR_OFF_HEADER_SIZE,
    HDR_OFF_MAGIC,
    HDR_OFF_RECORD_SIZE,
    HDR_OFF_SEQ_RESERVED,
    HDR_OFF_VERSION,
    HDR_OFF_WRITER_CHAINED,
    HEADER_SIZE,
    HEADER_STRUCT,
    HOST_SIZE,
    MAGIC,
    REC_OFF_CRC,
    RECORD_BODY_STRUCT,
    RECORD_SIZE,
    RECORD_STRUCT,
    SEG_FLAG_CLOSED,
    SEG_FLAG_KEYED,
    SEG_FLAG_RECOVERED,
    STATS_FIELDS,
    STATS_MAGIC,
    STATS_SIZE,
    STATS_STRUCT,
    TEXT_CHUNK_BYTES,
    U64_MAX,
    VERSION,
)

# dataclass(slots=True) needs Python 3.10; on 3.9 the classes are plain frozen dataclasses.
_SLOTS: dict[str, Any] = {"slots": True} if sys.version_info >= (3, 10) else {}

# --------------------------------------------------------------------------------------------
# CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, init and xor-out 0xFFFFFFFF).
# The native extension computes it (the crc32c crate: SSE4.2 / ARMv8 CRC); the table version
# below is the reference for readers of this file, checked against it in the tests.


def _make_table() -> tuple[int, ...]:
    out = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        out.append(crc)
    return tuple(out)


CRC32C_TABLE: tuple[int, ...] = _make_table()


def crc32c_py(data: Union[bytes, bytearray, memoryview], crc: int = 0) -> int:
    """CRC-32C of `data` in pure Python, one byte at a time; `crc` continues a CRC."""
    t = CRC32C_TABLE
    crc ^= 0xFFFFFFFF
    for byte in bytes(data):
        crc = t[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc32c(data: Union[bytes, bytearray, memoryview]) -> int:
    """CRC-32C of `data` (native)."""
    return int(_native_module.crc32c(bytes(data)))


def first_bad_record(buf: Union[bytes, bytearray, memoryview], count: int) -> int:
    """Index of the first of `count` records at the start of `buf` whose CRC is wrong, or -1."""
    if count <= 0:
        return -1
    return int(_native_module.crc32c_check(bytes(memoryview(buf)[: count * RECORD_SIZE])))


def record_crc_ok(buf: Union[bytes, bytearray, memoryview], offset: int = 0) -> bool:
    """True when the CRC field of the record at `offset` matches its bytes 0..60."""
    mv = memoryview(buf)
    stored = CRC_STRUCT.unpack_from(mv, offset + REC_OFF_CRC)[0]
    return crc32c(mv[offset : offset + CRC_SPAN]) == stored


def stamp_crcs(buf: Union[bytearray, memoryview], count: int, offset: int = 0) -> None:
    """Write the CRC field of `count` consecutive records starting at `offset`, in place."""
    mv = memoryview(buf)
    for i in range(count):
        o = offset + i * RECORD_SIZE
        CRC_STRUCT.pack_into(mv, o + REC_OFF_CRC, crc32c(mv[o : o + CRC_SPAN]))


# --------------------------------------------------------------------------------------------
# Records


# The native class (rust/python/src/record.rs): `read_audit_log` builds millions, and a native
# instance is one allocation where a dataclass needed a dozen. Its fields are those of the
# record layout above plus `salvaged`; `kind` and `reason_code` return the enums of this
# module (looked up here, once). Equal records compare equal; instances are immutable.
Record = _native_module.Record


def pack_record(
    seq: int,
    wall_ns: int,
    mono_ns: int,
    kind: int,
    flags: int = 0,
    code: int = 0,
    thread_id: int = 0,
    a: int = 0,
    b: int = 0,
    c: int = 0,
    symbol_id: int = 0,
    crc: Optional[int] = None,
) -> bytes:
    """The 64 bytes of a record; the CRC is computed unless `crc` is given (e.g. to forge)."""
    body = RECORD_BODY_STRUCT.pack(
        seq, wall_ns, mono_ns, int(kind), flags, code, thread_id, a, b, c, symbol_id
    )
    if crc is None:
        crc = crc32c(body)
    return body + CRC_STRUCT.pack(crc)


def pack_record_into(buf: Union[bytearray, memoryview], offset: int, *fields: int) -> None:
    """`pack_record(*fields)` written into `buf` at `offset` (CRC computed)."""
    body = RECORD_BODY_STRUCT.pack(*fields)
    mv = memoryview(buf)
    mv[offset : offset + CRC_SPAN] = body
    CRC_STRUCT.pack_into(mv, offset + REC_OFF_CRC, crc32c(body))


def unpack_record(buf: Union[bytes, bytearray, memoryview], offset: int = 0) -> Record:
    """Decode the record at `offset` of `buf` (the CRC is not checked; see `record_crc_ok`)."""
    t = RECORD_STRUCT.unpack_from(buf, offset)
    return Record(t[0], t[1], t[2], kind_of(t[3]), *t[4:])


def encode_text_chunks(text: str) -> list[tuple[int, int, int, int]]:
    """Split `text` (UTF-8) into TEXT-record payloads: (chunk index, a, b, symbol_id) each.

    Chunks never split a UTF-8 character; an empty text gives one empty chunk.
    """
    data = text.encode("utf-8")
    chunks: list[bytes] = []
    i = 0
    while i < len(data) or not chunks:
        j = min(i + TEXT_CHUNK_BYTES, len(data))
        while j < len(data) and j > i and (data[j] & 0xC0) == 0x80:  # continuation byte
            j -= 1
        chunks.append(data[i:j])
        i = j
        if i >= len(data):
            break
    out = []
    for idx, ch in enumerate(chunks):
        padded = ch.ljust(TEXT_CHUNK_BYTES, b"\0")
        a, b, sym = struct.unpack("<qqI", padded)
        out.append((idx, a, b, sym))
    return out


def decode_text_chunk(a: int, b: int, symbol_id: int) -> str:
    """The text carried by a TEXT record's `a`, `b`, `symbol_id` (NUL padding removed)."""
    raw = struct.pack("<qqI", a, b, symbol_id).rstrip(b"\0")
    return raw.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------------------------
# Segment header


@dataclass(frozen=True, **_SLOTS)
class SegmentHeader:
    """The fixed part of a segment's 4096-byte header."""

    segment_index: int
    first_seq: int
    created_wall_ns: int
    pid: int
    flags: int
    capacity: int
    committed: int
    chain_records: int
    chain_head: bytes
    prev_chain: bytes
    host: str
    writer_chained: int = 0
    seq_reserved: int = 0
    magic: bytes = MAGIC
    version: int = VERSION
    record_size: int = RECORD_SIZE
    header_size: int = HEADER_SIZE

    @property
    def closed(self) -> bool:
        return bool(self.flags & SEG_FLAG_CLOSED)

    @property
    def keyed(self) -> bool:
        return bool(self.flags & SEG_FLAG_KEYED)

    @property
    def recovered(self) -> bool:
        return bool(self.flags & SEG_FLAG_RECOVERED)

    def pack(self) -> bytes:
        """The full 4096-byte header."""
        return pack_header(self)


def pack_header(h: SegmentHeader) -> bytes:
    """The 4096-byte header of `h` (host truncated to 64 bytes on a character boundary)."""
    host = h.host.encode("utf-8")[:HOST_SIZE]
    host = host.decode("utf-8", errors="ignore").encode("utf-8")
    fixed = HEADER_STRUCT.pack(
        h.magic,
        h.version,
        h.record_size,
        h.header_size,
        h.segment_index,
        h.first_seq,
        h.created_wall_ns,
        h.pid,
        h.flags,
        h.capacity,
        h.committed,
        h.chain_records,
        h.chain_head,
        h.prev_chain,
        host,
        0,
    ) + struct.pack("<QQ", h.writer_chained, h.seq_reserved)
    return fixed + bytes(HEADER_SIZE - len(fixed))


def _u64_at(buf: Union[bytes, bytearray, memoryview], off: int) -> int:
    return struct.unpack_from("<Q", buf, off)[0] if len(buf) >= off + 8 else 0


def unpack_header(buf: Union[bytes, bytearray, memoryview], path: str = "") -> SegmentHeader:
    """Parse and check a segment header; `AuditLogCorrupt` (with path and offset) if bad.

    Checks magic, version, record size and header size. Capacity and committed are checked
    by the reader against the file size, which this function does not know.
    """
    if len(buf) < HEADER_STRUCT.size:
        raise AuditLogCorrupt(
            f"segment header truncated ({len(buf)} bytes, need {HEADER_SIZE})",
            path=path,
            offset=len(buf),
        )
    (
        magic,
        version,
        record_size,
        header_size,
        index,
        first_seq,
        created,
        pid,
        flags,
        capacity,
        committed,
        chain_records,
        chain_head,
        prev_chain,
        host,
        _reserved,
    ) = HEADER_STRUCT.unpack_from(buf, 0)
    if magic != MAGIC:
        raise AuditLogCorrupt(
            f"bad magic {magic!r} (expected {MAGIC!r}): not an audit segment",
            path=path,
            offset=HDR_OFF_MAGIC,
        )
    if version != VERSION:
        raise AuditLogCorrupt(
            f"unsupported format version {version} (this reader knows {VERSION})",
            path=path,
            offset=HDR_OFF_VERSION,
        )
    if record_size != RECORD_SIZE:
        raise AuditLogCorrupt(
            f"bad record size {record_size} (expected {RECORD_SIZE})",
            path=path,
            offset=HDR_OFF_RECORD_SIZE,
        )
    if header_size != HEADER_SIZE:
        raise AuditLogCorrupt(
            f"bad header size {header_size} (expected {HEADER_SIZE})",
            path=path,
            offset=HDR_OFF_HEADER_SIZE,
        )
    return SegmentHeader(
        segment_index=index,
        first_seq=first_seq,
        created_wall_ns=created,
        pid=pid,
        flags=flags,
        capacity=capacity,
        committed=committed,
        chain_records=chain_records,
        chain_head=chain_head,
        prev_chain=prev_chain,
        host=host.rstrip(b"\0").decode("utf-8", errors="replace"),
        writer_chained=_u64_at(buf, HDR_OFF_WRITER_CHAINED),
        seq_reserved=_u64_at(buf, HDR_OFF_SEQ_RESERVED),
        magic=magic,
        version=version,
        record_size=record_size,
        header_size=header_size,
    )


# --------------------------------------------------------------------------------------------
# stats.bin


def pack_stats(values: dict[str, int]) -> bytes:
    """The 4096 bytes of stats.bin from a dict with the `STATS_FIELDS` keys (missing: 0)."""
    fixed = STATS_STRUCT.pack(STATS_MAGIC, *(int(values.get(k, 0)) & U64_MAX for k in STATS_FIELDS))
    return fixed + bytes(STATS_SIZE - len(fixed))


def unpack_stats(buf: Union[bytes, bytearray, memoryview], path: str = "") -> dict[str, int]:
    """Parse stats.bin; `AuditLogCorrupt` when the magic or the size is wrong."""
    if len(buf) < STATS_STRUCT.size:
        raise AuditLogCorrupt("stats file truncated", path=path, offset=len(buf))
    vals = STATS_STRUCT.unpack_from(buf, 0)
    if vals[0] != STATS_MAGIC:
        raise AuditLogCorrupt(f"bad stats magic {vals[0]!r}", path=path, offset=0)
    return dict(zip(STATS_FIELDS, vals[1:]))
