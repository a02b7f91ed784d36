"""The on-disk format (docs/FORMAT.md): CRC-32C, records and their named fields, TEXT chunks,
the segment header (garbage named with its offset), bulk CRC checks, names and layout."""

from __future__ import annotations

import struct
from datetime import datetime, timezone

import pytest
from format_support import (
    T0,
    rec,
    trades,
)
from killswitch_audit.errors import AuditLogCorrupt
from killswitch_audit.format import (
    HDR_OFF_HEADER_SIZE,
    HDR_OFF_MAGIC,
    HDR_OFF_RECORD_SIZE,
    HDR_OFF_VERSION,
    HEADER_SIZE,
    REC_FLAG_EMERGENCY,
    REC_FLAG_SYSTEM,
    RECORD_SIZE,
    SEG_FLAG_CLOSED,
    KillSwitchReason,
    RecordKind,
    SegmentHeader,
    crc32c,
    crc32c_py,
    encode_text_chunks,
    first_bad_record,
    pack_header,
    pack_record,
    pack_stats,
    parse_segment_name,
    record_crc_ok,
    segment_name,
    stamp_crcs,
    unpack_header,
    unpack_record,
    unpack_stats,
)
from killswitch_audit.reader import (
    read_stats,
)


def test_crc32c_matches_the_castagnoli_check_value():
    assert crc32c_py(b"123456789") == 0xE3069283
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c_py(b"") == 0
    for n in range(0, 70):
        data = bytes((i * 7 + n) & 0xFF for i in range(n))
        # the slicing-by-8 path agrees with a bit-at-a-time reference
        ref = 0xFFFFFFFF
        for byte in data:
            ref ^= byte
            for _ in range(8):
                ref = (ref >> 1) ^ 0x82F63B78 if ref & 1 else ref >> 1
        assert crc32c_py(data) == ref ^ 0xFFFFFFFF == crc32c(data)


def test_record_round_trip_and_named_fields():
    raw = pack_record(
        7, T0 + 123_456_789, 99, RecordKind.KILL_SWITCH, REC_FLAG_EMERGENCY,
        KillSwitchReason.DAILY_LOSS_LIMIT, 555, -300, -2_500_000, 3, 42,
    )  # fmt: skip
    assert len(raw) == RECORD_SIZE and record_crc_ok(raw)
    r = unpack_record(raw)
    assert (r.seq, r.wall_ns, r.mono_ns, r.thread_id) == (7, T0 + 123_456_789, 99, 555)
    assert r.kind is RecordKind.KILL_SWITCH and r.reason_code is KillSwitchReason.DAILY_LOSS_LIMIT
    assert (r.position_size, r.pnl_cents, r.scope_id, r.symbol_id) == (-300, -2_500_000, 3, 42)
    assert r.is_emergency and not r.is_system and r.crc_ok
    assert r.wall_time == datetime.fromtimestamp(T0 // 10**9, tz=timezone.utc).replace(
        microsecond=123_456
    )
    assert r.to_bytes() == raw
    t = unpack_record(pack_record(8, 1, 2, RecordKind.TRADE, 0, 0, 1, 100, 10_125, 2**64 - 1, 7))
    assert (t.quantity, t.price_cents, t.order_id) == (100, 10_125, 2**64 - 1)
    with pytest.raises(AttributeError):
        t.seq = 3  # frozen
    unknown = unpack_record(pack_record(9, 1, 2, 200, REC_FLAG_SYSTEM))
    assert unknown.kind == 200 and not isinstance(unknown.kind, RecordKind) and unknown.is_system
    # byte layout as documented
    assert raw[24] == RecordKind.KILL_SWITCH and raw[25] == REC_FLAG_EMERGENCY
    assert struct.unpack_from("<I", raw, 60)[0] == crc32c(raw[:60])


def test_text_records_carry_utf8_chunks():
    text = "reason: ünknown trigger 'FAT_FINGER' on desk 7 — see ticket"
    chunks = encode_text_chunks(text)
    recs = [
        unpack_record(pack_record(i, 1, 1, RecordKind.TEXT, 0, idx, 0, a, b, 77, sym))
        for i, (idx, a, b, sym) in enumerate(chunks)
    ]
    assert [r.code for r in recs] == list(range(len(chunks)))
    assert "".join(r.text for r in recs) == text
    assert unpack_record(rec(1)).text is None


def test_header_round_trip_and_garbage_is_named_with_its_offset():
    h = SegmentHeader(3, 10, T0, 99, SEG_FLAG_CLOSED, 1000, 5, 5, b"\1" * 32, b"\2" * 32, "h")
    raw = pack_header(h)
    assert len(raw) == HEADER_SIZE and raw[:8] == b"KSAUDIT1"
    assert unpack_header(raw) == h and h.closed and not h.keyed
    for off, value in [
        (HDR_OFF_MAGIC, b"NOTAUDIT"),
        (HDR_OFF_VERSION, struct.pack("<H", 2)),
        (HDR_OFF_RECORD_SIZE, struct.pack("<H", 128)),
        (HDR_OFF_HEADER_SIZE, struct.pack("<I", 8192)),
    ]:
        bad = bytearray(raw)
        bad[off : off + len(value)] = value
        with pytest.raises(AuditLogCorrupt) as e:
            unpack_header(bytes(bad), path="x.seg")
        assert e.value.offset == off and e.value.path == "x.seg"


def test_bulk_crc_check_and_stamping_agree():
    buf = bytearray(b"".join(trades(0, 300)))
    assert first_bad_record(buf, 300) == -1
    buf[200 * RECORD_SIZE + 33] ^= 0x10
    assert first_bad_record(buf, 300) == 200
    assert first_bad_record(bytes(64 * 5), 5) == 0  # an all-zero record is never valid
    stamped = bytearray(buf)
    for i in range(300):
        stamped[i * RECORD_SIZE + 60 : i * RECORD_SIZE + 64] = b"\0\0\0\0"
    stamp_crcs(stamped, 300)
    assert first_bad_record(stamped, 300) == -1
    stamp_crcs(memoryview(stamped)[64:], 1)  # a view works too


def test_segment_and_stats_names_and_layout(tmp_path):
    assert segment_name(3) == "000000000003.seg" and parse_segment_name("000000000003.seg") == 3
    assert parse_segment_name("000000000003.seg.next") is None
    (tmp_path / "stats.bin").write_bytes(pack_stats({"pid": 5, "last_seq": 9, "segments": 2}))
    st = read_stats(tmp_path)
    assert st["pid"] == 5 and st["last_seq"] == 9 and st["segments"] == 2
    assert st["records_written"] == 0
    with pytest.raises(AuditLogCorrupt):
        unpack_stats(b"XXXXXXXX" + bytes(200))
