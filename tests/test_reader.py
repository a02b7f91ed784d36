"""The reader on segment files built byte by byte here: committed records then the valid tail,
torn tails, damage named by file and offset, garbage and truncated files, segment order, the
numpy dtype as documented."""

from __future__ import annotations

import struct

import pytest
from format_support import (
    rec,
    trades,
    write_segment,
)
from killswitch_audit.errors import AuditLogCorrupt
from killswitch_audit.format import (
    HDR_OFF_CAPACITY,
    HDR_OFF_COMMITTED,
    HDR_OFF_MAGIC,
    HDR_OFF_RECORD_SIZE,
    HDR_OFF_VERSION,
    HEADER_SIZE,
    NUMPY_DTYPE_DESCR,
    REC_FLAG_EMERGENCY,
    REC_FLAG_SYSTEM,
    RECORD_SIZE,
    RecordKind,
    segment_name,
)
from killswitch_audit.reader import (
    export_chain_head,
    read_audit_log,
    verify_audit_log,
)


def read_all(path, **kw):
    return list(read_audit_log(path, **kw))


def test_reader_reads_committed_then_valid_tail_and_stops_at_zero(tmp_path):
    seg = tmp_path / segment_name(0)
    records = trades(0, 10)
    write_segment(seg, records[:6], committed=6, closed=False, tail=records[6:])
    got = read_all(seg)
    assert [r.seq for r in got] == list(range(10)), "records after committed are read while valid"
    assert [r.price_cents for r in got] == [10_000 + s for s in range(10)]
    assert verify_audit_log(seg).torn_tails == []


def test_torn_tail_is_skipped_reported_strict_raises_salvage_reads_past_it(tmp_path):
    seg = tmp_path / segment_name(0)
    records = trades(0, 8)
    torn = bytearray(rec(8))
    torn[40:] = bytes(24)  # half written: the CRC at the end is missing
    write_segment(seg, records, committed=5, closed=False, tail=[bytes(torn), rec(9)])
    torn_offset = HEADER_SIZE + 8 * RECORD_SIZE
    assert [r.seq for r in read_all(seg)] == list(range(8))
    with pytest.raises(AuditLogCorrupt) as e:
        read_all(seg, strict=True)
    assert e.value.offset == torn_offset and e.value.path == str(seg)
    salvaged = read_all(seg, salvage=True)
    assert [(r.seq, r.salvaged) for r in salvaged[7:]] == [(7, False), (9, True)]
    report = verify_audit_log(seg)
    assert report.torn_tails == [(str(seg), torn_offset)] and not report.ok


def test_flipped_byte_below_committed_names_file_and_offset(tmp_path):
    seg = tmp_path / segment_name(0)
    write_segment(seg, trades(0, 50))
    raw = bytearray(seg.read_bytes())
    bad_offset = HEADER_SIZE + 17 * RECORD_SIZE
    raw[bad_offset + 45] ^= 0x01
    seg.write_bytes(bytes(raw))
    got = []
    with pytest.raises(AuditLogCorrupt) as e:
        for r in read_audit_log(tmp_path):
            got.append(r.seq)
    assert e.value.path == str(seg) and e.value.offset == bad_offset
    assert str(bad_offset) in str(e.value) and str(seg) in str(e.value)
    assert got == list(range(17)), "the records before the damage are returned"
    report = verify_audit_log(tmp_path)
    assert not report.ok and report.corrupt[0][:2] == (str(seg), bad_offset)


def test_zero_record_below_committed_is_corruption(tmp_path):
    seg = tmp_path / segment_name(0)
    records = trades(0, 5)
    records[3] = bytes(RECORD_SIZE)
    write_segment(seg, records)
    with pytest.raises(AuditLogCorrupt, match="all zero") as e:
        read_all(seg)
    assert e.value.offset == HEADER_SIZE + 3 * RECORD_SIZE


@pytest.mark.parametrize(
    ("mutate", "offset"),
    [
        (lambda raw: raw[:100], 100),  # header truncated
        (lambda raw: b"", 0),  # empty file
        (lambda raw: b"garbage!" + raw[8:], HDR_OFF_MAGIC),
        (lambda raw: raw[:8] + struct.pack("<H", 9) + raw[10:], HDR_OFF_VERSION),
        (lambda raw: raw[:10] + struct.pack("<H", 0) + raw[12:], HDR_OFF_RECORD_SIZE),
        (
            lambda raw: (
                raw[:HDR_OFF_COMMITTED] + struct.pack("<Q", 2**62) + raw[HDR_OFF_COMMITTED + 8 :]
            ),
            HDR_OFF_COMMITTED,
        ),
        # records below committed cut off: the offset is where the file ends
        (lambda raw: raw[: HEADER_SIZE + 10 * RECORD_SIZE + 30], HEADER_SIZE + 10 * RECORD_SIZE),
    ],
)
def test_garbage_and_truncated_files_raise_with_path_and_offset(tmp_path, mutate, offset):
    seg = tmp_path / segment_name(0)
    write_segment(seg, trades(0, 20), capacity=20)
    seg.write_bytes(mutate(seg.read_bytes()))
    with pytest.raises(AuditLogCorrupt) as e:
        read_all(tmp_path)
    assert (e.value.path, e.value.offset) == (str(seg), offset)
    report = verify_audit_log(tmp_path)
    assert not report.ok and report.corrupt[0][:2] == (str(seg), offset)


def test_huge_capacity_in_a_garbage_header_allocates_nothing(tmp_path):
    seg = tmp_path / segment_name(0)
    write_segment(seg, trades(0, 4))
    raw = bytearray(seg.read_bytes())
    struct.pack_into("<Q", raw, HDR_OFF_CAPACITY, 2**63)
    seg.write_bytes(bytes(raw))
    assert [r.seq for r in read_all(seg)] == [0, 1, 2, 3]


def test_directory_reads_segments_in_index_order_and_ignores_next(tmp_path):
    final0 = write_segment(tmp_path / segment_name(0), trades(0, 5))
    final1 = write_segment(tmp_path / segment_name(1), trades(5, 5), index=1, prev_chain=final0)
    write_segment(tmp_path / segment_name(2), trades(10, 3), index=2, prev_chain=final1)
    (tmp_path / (segment_name(3) + ".next")).write_bytes(b"being prepared")
    (tmp_path / "notes.txt").write_text("not a segment")
    assert [r.seq for r in read_all(tmp_path)] == list(range(13))
    assert [r.seq for r in read_all(tmp_path, kinds=[RecordKind.KILL_SWITCH])] == []
    assert len(read_all(tmp_path, kinds=["trade"])) == 13
    report = verify_audit_log(tmp_path)
    assert report.ok, report.lines()
    assert (report.records, report.segments, report.first_seq, report.last_seq) == (13, 3, 0, 12)
    head = export_chain_head(tmp_path)
    assert head["segment"] == 2 and head["records"] == 3 and head["head"] == report.chain_head
    assert not head["keyed"] and head["closed"]


def test_missing_path_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_audit_log(tmp_path / "nope")  # at the call, not at the first next()
    with pytest.raises(FileNotFoundError):
        verify_audit_log(tmp_path / "nope")


def test_segment_named_for_another_index_is_corrupt(tmp_path):
    write_segment(tmp_path / segment_name(1), trades(0, 3), index=0)
    with pytest.raises(AuditLogCorrupt) as e:
        read_all(tmp_path)
    assert e.value.offset == 16


@pytest.mark.skipif(not __import__("importlib").util.find_spec("numpy"), reason="numpy absent")
def test_numpy_structured_dtype_decodes_a_segment_as_documented(tmp_path):
    import numpy as np

    seg = tmp_path / segment_name(0)
    records = [
        *trades(0, 40),
        rec(40, RecordKind.KILL_SWITCH, REC_FLAG_EMERGENCY, 1, -5, -7, 0, 3),
        rec(41, RecordKind.GAP, REC_FLAG_SYSTEM, 0, 100, 2, 101),
    ]
    write_segment(seg, records, capacity=64)
    dtype = np.dtype(NUMPY_DTYPE_DESCR)
    assert dtype.itemsize == RECORD_SIZE
    committed = struct.unpack_from("<Q", seg.read_bytes(), HDR_OFF_COMMITTED)[0]
    arr = np.fromfile(seg, dtype, count=committed, offset=HEADER_SIZE)
    got = read_all(seg)
    assert len(arr) == len(got) == 42
    for row, r in zip(arr, got):
        assert tuple(int(row[name]) for name, _ in NUMPY_DTYPE_DESCR) == (
            r.seq, r.wall_ns, r.mono_ns, int(r.kind), r.flags, r.code, r.thread_id,
            r.a, r.b, r.c, r.symbol_id, r.crc32c,
        )  # fmt: skip
