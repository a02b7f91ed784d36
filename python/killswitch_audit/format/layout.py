"""The byte layout of version 1: sizes, offsets, flags, the structs that pack them, the
numpy dtype of a record and the stats.bin fields (docs/FORMAT.md)."""

from __future__ import annotations

import re
import struct
from typing import Optional

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
