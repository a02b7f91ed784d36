"""The on-disk format of an audit log, version 1 (docs/FORMAT.md): the names Python code
uses for it.

Constants, the enums, the frozen `Record` that `read_audit_log` returns (built by the native
reader), the `SegmentHeader`, and the small encoders tests and tools use to write or forge
bytes (`pack_record`, `pack_header`, `ChainHasher`, CRC-32C). Reading and verifying is the
Rust core's job (`reader.py` converts); tests/reference_decoder.py is an independent decoder.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import struct
import sys
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Optional, Union

from . import _native as _native_module  # type: ignore[attr-defined]
from .errors import AuditLogCorrupt

__all__ = [
    "EMPTY_CHAIN",
    "HEADER_SIZE",
    "HMAC_KEY_ENV",
    "MAGIC",
    "RECORD_SIZE",
    "REC_FLAG_EMERGENCY",
    "REC_FLAG_SYSTEM",
    "SEG_FLAG_CLOSED",
    "SEG_FLAG_KEYED",
    "STATS_FIELDS",
    "STATS_MAGIC",
    "STATS_SIZE",
    "SYSTEM_KINDS",
    "TEXT_CHUNK_BYTES",
    "VERSION",
    "ChainHasher",
    "ClockSync",
    "KillSwitchReason",
    "Record",
    "RecordKind",
    "Ring",
    "SegmentHeader",
    "TradingState",
    "chain_digest",
    "crc32c",
    "crc32c_py",
    "decode_text_chunk",
    "encode_text_chunks",
    "first_bad_record",
    "hmac_key_from_env",
    "pack_header",
    "pack_record",
    "pack_record_into",
    "pack_stats",
    "parse_hmac_key",
    "parse_segment_name",
    "record_crc_ok",
    "segment_name",
    "stamp_crcs",
    "unpack_header",
    "unpack_record",
    "unpack_stats",
]

# dataclass(slots=True) needs Python 3.10; on 3.9 the classes are plain frozen dataclasses.
_SLOTS: dict[str, Any] = {"slots": True} if sys.version_info >= (3, 10) else {}

# --------------------------------------------------------------------------------------------
# Constants

MAGIC = b"KSAUDIT1"
VERSION = 1
RECORD_SIZE = 64
HEADER_SIZE = 4096
CRC_SPAN = 60  # the CRC covers bytes 0..60 of a record

# segment header flags
SEG_FLAG_CLOSED = 1 << 0
SEG_FLAG_KEYED = 1 << 1
SEG_FLAG_RECOVERED = 1 << 2

# record flags
REC_FLAG_SYSTEM = 1 << 0
REC_FLAG_EMERGENCY = 1 << 1

# header field offsets (bytes)
HDR_OFF_MAGIC = 0
HDR_OFF_VERSION = 8
HDR_OFF_RECORD_SIZE = 10
HDR_OFF_HEADER_SIZE = 12
HDR_OFF_SEGMENT_INDEX = 16
HDR_OFF_FIRST_SEQ = 24
HDR_OFF_CREATED_WALL_NS = 32
HDR_OFF_PID = 40
HDR_OFF_FLAGS = 44
HDR_OFF_CAPACITY = 48
HDR_OFF_COMMITTED = 56
HDR_OFF_CHAIN_RECORDS = 64
HDR_OFF_CHAIN_HEAD = 72
HDR_OFF_PREV_CHAIN = 104
HDR_OFF_HOST = 136
HDR_OFF_RESERVED = 200
HDR_OFF_WRITER_CHAINED = 208
HDR_OFF_SEQ_RESERVED = 216
HOST_SIZE = 64
CHAIN_SIZE = 32
EMPTY_CHAIN = bytes(CHAIN_SIZE)

# record field offsets (bytes)
REC_OFF_SEQ = 0
REC_OFF_WALL_NS = 8
REC_OFF_MONO_NS = 16
REC_OFF_KIND = 24
REC_OFF_FLAGS = 25
REC_OFF_CODE = 26
REC_OFF_THREAD_ID = 28
REC_OFF_A = 32
REC_OFF_B = 40
REC_OFF_C = 48
REC_OFF_SYMBOL_ID = 56
REC_OFF_CRC = 60

#: the whole record, CRC included
RECORD_STRUCT = struct.Struct("<QQQBBHIqqQII")
#: the 60 bytes the CRC covers
RECORD_BODY_STRUCT = struct.Struct("<QQQBBHIqqQI")
CRC_STRUCT = struct.Struct("<I")
#: the fixed part of the header (offsets 0..208); the rest of the 4096 bytes is zero
HEADER_STRUCT = struct.Struct("<8sHHIQQQIIQQQ32s32s64sQ")
assert RECORD_STRUCT.size == RECORD_SIZE and RECORD_BODY_STRUCT.size == CRC_SPAN
assert HEADER_STRUCT.size == HDR_OFF_RESERVED + 8

#: numpy structured dtype description of a record (docs/FORMAT.md)
NUMPY_DTYPE_DESCR = [
    ("seq", "<u8"),
    ("wall_ns", "<u8"),
    ("mono_ns", "<u8"),
    ("kind", "u1"),
    ("flags", "u1"),
    ("code", "<u2"),
    ("thread_id", "<u4"),
    ("a", "<i8"),
    ("b", "<i8"),
    ("c", "<u8"),
    ("symbol_id", "<u4"),
    ("crc32c", "<u4"),
]

U64_MAX = 0xFFFF_FFFF_FFFF_FFFF

TEXT_CHUNK_BYTES = 20  # a, b (8 bytes each) and symbol_id (4 bytes)

STATS_MAGIC = b"KSSTATS1"
STATS_SIZE = 4096
STATS_FIELDS = (
    "pid",
    "updated_wall_ns",
    "records_written",
    "records_flushed",
    "dropped_main",
    "dropped_emergency",
    "main_ring_len",
    "main_ring_capacity",
    "emergency_ring_len",
    "emergency_ring_capacity",
    "flushes",
    "bytes_written",
    "segments",
    "sink_errors",
    "last_seq",
)
STATS_STRUCT = struct.Struct("<8s" + "Q" * len(STATS_FIELDS))

_SEGMENT_NAME_RE = re.compile(r"^(\d+)\.seg$")


def segment_name(index: int) -> str:
    """File name of segment `index`: 12-digit zero-padded index and `.seg`."""
    return f"{index:012d}.seg"


def parse_segment_name(name: str) -> Optional[int]:
    """Segment index from a file name such as `000000000003.seg`, or None (`.seg.next` too)."""
    m = _SEGMENT_NAME_RE.match(name)
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------------------------
# Enumerations


class _NamedIntEnum(IntEnum):
    """An IntEnum whose str() and f-string form are its NAME on every Python version (3.11
    changed IntEnum.__str__ to the number); format specs for numbers still give the number."""

    def __str__(self) -> str:
        return self.name

    def __format__(self, spec: str) -> str:
        if spec and spec[-1] in "bcdoxXn":
            return int.__format__(int(self), spec)
        return format(self.name, spec)


class RecordKind(_NamedIntEnum):
    """Record kinds (docs/FORMAT.md, "Kinds"); 64 and above are written by the flusher."""

    KILL_SWITCH = 1
    TRADE = 2
    ORDER_SENT = 3
    ORDER_CANCELLED = 4
    RISK_CHECK = 5
    STATE_CHANGE = 6
    RESET = 7
    HANDLER_FAILURE = 8
    TEXT = 9
    ORDER_DENIED = 10
    STOP_STEP = 11
    USER = 12
    GAP = 64
    CLOCK = 65
    SESSION_START = 66
    SESSION_END = 67


SYSTEM_KINDS = frozenset(
    {RecordKind.GAP, RecordKind.CLOCK, RecordKind.SESSION_START, RecordKind.SESSION_END}
)


class KillSwitchReason(_NamedIntEnum):
    """Why the kill switch fired (the `code` of a KILL_SWITCH record)."""

    DAILY_LOSS_LIMIT = 1
    POSITION_LIMIT = 2
    DRAWDOWN = 3
    MANUAL = 4
    MESSAGE_RATE = 5
    REPEATED_EXECUTIONS = 6
    TRIGGER_FAILURE = 7
    PRICE_COLLAR = 8
    CONNECTIVITY = 9
    RISK_SYSTEM = 10
    OTHER = 255


class TradingState(_NamedIntEnum):
    """Trading state of a scope (STATE_CHANGE `code`, RESET `a`/`b`)."""

    ACTIVE = 0
    REDUCING = 1
    HALTED = 2


class Ring(_NamedIntEnum):
    """Which ring a GAP record speaks of (its `code`)."""

    MAIN = 0
    EMERGENCY = 1


class ClockSync(_NamedIntEnum):
    """Synchronisation state in a CLOCK record (its `code`)."""

    SYNCHRONISED = 0
    UNSYNCHRONISED = 1
    UNKNOWN = 2


_KIND_BY_VALUE: dict[int, RecordKind] = {int(k): k for k in RecordKind}
_REASON_BY_VALUE: dict[int, KillSwitchReason] = {int(r): r for r in KillSwitchReason}


def kind_of(value: int) -> Union[RecordKind, int]:
    """`RecordKind(value)` when known, else the int itself (a newer writer's kind)."""
    return _KIND_BY_VALUE.get(value, value)


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
# Hash chain


class ChainHasher:
    """Running hash chain of one segment: SHA-256 (or HMAC-SHA256 with `key`) over
    `prev_chain || segment_index (u64 LE) || record bytes in file order`."""

    __slots__ = ("_h", "records")

    def __init__(self, prev_chain: bytes, segment_index: int, key: Optional[bytes] = None):
        if len(prev_chain) != CHAIN_SIZE:
            raise ValueError(f"prev_chain must be {CHAIN_SIZE} bytes, got {len(prev_chain)}")
        self._h: Any = hmac.new(key, digestmod=hashlib.sha256) if key else hashlib.sha256()
        self._h.update(prev_chain)
        self._h.update(struct.pack("<Q", segment_index))
        self.records = 0

    def update(self, records: Union[bytes, bytearray, memoryview]) -> None:
        """Feed whole records (a multiple of 64 bytes)."""
        n = len(records)
        if n % RECORD_SIZE:
            raise ValueError("the chain is fed whole 64-byte records")
        self._h.update(records)
        self.records += n // RECORD_SIZE

    def digest(self) -> bytes:
        """The chain value after the records fed so far (the hasher can go on)."""
        return self._h.copy().digest()


def chain_digest(
    prev_chain: bytes,
    segment_index: int,
    records: Union[bytes, bytearray, memoryview],
    key: Optional[bytes] = None,
) -> bytes:
    """Chain value over `records` (whole 64-byte records) of segment `segment_index`."""
    h = ChainHasher(prev_chain, segment_index, key)
    h.update(records)
    return h.digest()


HMAC_KEY_ENV = "KILLSWITCH_AUDIT_HMAC_KEY"


def parse_hmac_key(value: Union[bytes, bytearray, str, None]) -> Optional[bytes]:
    """An HMAC key from bytes or a hex string (None or empty: no key); ValueError if bad hex."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value) or None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise ValueError("HMAC key must be hex digits (e.g. 64 hex characters)") from None
    raise TypeError(f"HMAC key must be bytes or a hex str, not {type(value).__name__}")


def hmac_key_from_env(var: str = HMAC_KEY_ENV) -> Optional[bytes]:
    """The hex HMAC key in environment variable `var`, or None when unset/empty."""
    return parse_hmac_key(os.environ.get(var))


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
