"""The on-disk format (docs/FORMAT.md) and the pure-Python reader/verifier, on segment files
built byte by byte here, independently of any writer."""

from __future__ import annotations

import os
import struct
from datetime import datetime, timezone
from pathlib import Path

import pytest
from killswitch_audit.errors import AuditLogCorrupt
from killswitch_audit.format import (
    EMPTY_CHAIN,
    HDR_OFF_CAPACITY,
    HDR_OFF_COMMITTED,
    HDR_OFF_HEADER_SIZE,
    HDR_OFF_MAGIC,
    HDR_OFF_RECORD_SIZE,
    HDR_OFF_VERSION,
    HEADER_SIZE,
    NUMPY_DTYPE_DESCR,
    REC_FLAG_EMERGENCY,
    REC_FLAG_SYSTEM,
    RECORD_SIZE,
    SEG_FLAG_CLOSED,
    ChainHasher,
    KillSwitchReason,
    RecordKind,
    SegmentHeader,
    chain_digest,
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
    export_chain_head,
    read_audit_log,
    read_stats,
    verify_audit_log,
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


def read_all(path, **kw):
    return list(read_audit_log(path, **kw))


# ------------------------------------------------------------------ format


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


# ------------------------------------------------------------------ reader


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


# ------------------------------------------------------------------ verify


def test_sequence_accounting_gap_records_vs_unaccounted_loss(tmp_path):
    seg = tmp_path / segment_name(0)
    recs = trades(0, 10) + trades(15, 5)  # 10..14 lost, declared by a GAP (a=10, b=5, c=14)
    recs.append(rec(20, RecordKind.GAP, REC_FLAG_SYSTEM, 0, 10, 5, 14))
    recs += trades(21, 3) + trades(30, 2)  # 24..29 lost without a GAP record
    write_segment(seg, recs)
    report = verify_audit_log(seg)
    assert report.gaps_accounted == 5 and report.gap_records == 1
    assert report.unaccounted_missing == [(24, 29)]
    assert not report.ok and any("UNACCOUNTED" in line for line in report.lines())


def test_gap_range_may_span_records_present_from_the_other_ring(tmp_path):
    seg = tmp_path / segment_name(0)
    # seqs 3 and 5 lost from the main ring, 4 is a kill switch from the emergency ring
    recs = [rec(4, RecordKind.KILL_SWITCH, REC_FLAG_EMERGENCY, 4), *trades(0, 3), *trades(6, 2)]
    recs.append(rec(8, RecordKind.GAP, REC_FLAG_SYSTEM, 0, 3, 2, 5))
    write_segment(seg, recs)
    report = verify_audit_log(seg)
    assert report.ok, report.lines()
    assert report.gaps_accounted == 2 and report.unaccounted_missing == []


def test_duplicate_seq_and_gap_count_mismatch_fail(tmp_path):
    seg = tmp_path / segment_name(0)
    recs = [*trades(0, 5), rec(3), rec(9, RecordKind.GAP, REC_FLAG_SYSTEM, 0, 5, 4, 7)]
    write_segment(seg, recs)
    report = verify_audit_log(seg)
    assert report.duplicates == [3]
    assert report.accounting_errors and not report.ok  # GAP says 4 lost, only 3 missing (5..7)


def test_open_last_segment_is_a_note_and_its_chain_is_checked_up_to_chain_records(tmp_path):
    final0 = write_segment(tmp_path / segment_name(0), trades(0, 5))
    write_segment(
        tmp_path / segment_name(1), trades(5, 6), index=1, prev_chain=final0,
        committed=6, chain_records=4, closed=False,
    )  # fmt: skip
    report = verify_audit_log(tmp_path)
    assert report.ok, report.lines()
    assert any("not closed" in n for n in report.notes)


def test_verify_detects_deleted_segment_and_broken_prev_chain(tmp_path):
    final0 = write_segment(tmp_path / segment_name(0), trades(0, 5))
    final1 = write_segment(tmp_path / segment_name(1), trades(5, 5), index=1, prev_chain=final0)
    write_segment(tmp_path / segment_name(2), trades(10, 5), index=2, prev_chain=final1)
    os.unlink(tmp_path / segment_name(1))
    report = verify_audit_log(tmp_path)
    assert not report.chain_ok and report.chain_errors[0][0] == str(tmp_path / segment_name(2))
    # the same after renaming 2 -> 1: the index no longer fits the name, and the chain breaks
    os.rename(tmp_path / segment_name(2), tmp_path / segment_name(1))
    assert not verify_audit_log(tmp_path).ok


def test_keyed_chain_needs_the_key(tmp_path, monkeypatch):
    monkeypatch.delenv("KILLSWITCH_AUDIT_HMAC_KEY", raising=False)
    key = bytes(range(32))
    seg = tmp_path / segment_name(0)
    write_segment(seg, trades(0, 5), key=key)
    no_key = verify_audit_log(tmp_path)
    assert not no_key.ok and "no key" in no_key.chain_errors[0][2] and no_key.keyed
    assert verify_audit_log(tmp_path, key=key).ok
    assert verify_audit_log(tmp_path, key=key.hex()).ok
    assert not verify_audit_log(tmp_path, key=b"wrong").chain_ok
    monkeypatch.setenv("KILLSWITCH_AUDIT_HMAC_KEY", key.hex())
    assert verify_audit_log(tmp_path).ok
    assert export_chain_head(tmp_path)["keyed"]


def test_chain_hasher_is_incremental():
    data = b"".join(trades(0, 10))
    h = ChainHasher(EMPTY_CHAIN, 4)
    h.update(data[:320])
    mid = h.digest()
    h.update(data[320:])
    assert mid == chain_digest(EMPTY_CHAIN, 4, data[:320])
    assert h.digest() == chain_digest(EMPTY_CHAIN, 4, data) and h.records == 10
    assert chain_digest(EMPTY_CHAIN, 5, data) != h.digest(), "the segment index is chained"


# ------------------------------------------------------------------ fuzz

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    cut=st.one_of(st.none(), st.integers(min_value=0, max_value=HEADER_SIZE + 40 * RECORD_SIZE)),
    flips=st.lists(
        st.tuples(st.integers(0, HEADER_SIZE + 40 * RECORD_SIZE - 1), st.integers(0, 7)),
        max_size=3,
    ),
    header_garbage=st.one_of(st.none(), st.binary(min_size=1, max_size=256)),
)
def test_fuzzed_segments_give_corrupt_or_a_prefix_never_another_error(
    tmp_path_factory, cut, flips, header_garbage
):
    d = tmp_path_factory.mktemp("fuzz")
    seg = d / segment_name(0)
    records = trades(0, 30)
    write_segment(seg, records[:20], committed=20, closed=False, tail=records[20:], capacity=40)
    original = [unpack_record(r) for r in records]
    raw = bytearray(seg.read_bytes())
    if header_garbage is not None:
        raw[: len(header_garbage)] = header_garbage
    for pos, bit in flips:
        raw[pos] ^= 1 << bit
    if cut is not None:
        raw = raw[:cut]
    seg.write_bytes(bytes(raw))
    got = []
    try:
        for r in read_audit_log(seg):
            got.append(r)
    except AuditLogCorrupt as e:
        assert e.path == str(seg) and 0 <= e.offset <= len(raw)
    assert got == original[: len(got)], "only a prefix of the valid records"
    report = verify_audit_log(seg)  # never raises on damage
    assert isinstance(report.lines(), list)
    if report.ok:
        assert [r.seq for r in got] == list(range(len(got)))


# ------------------------------------------------------------------ speed


@pytest.mark.slow
def test_reading_a_million_records(tmp_path):

    n = 1_000_000
    body = bytearray(b"".join(trades(0, 1000)) * (n // 1000))
    for i in range(n):
        struct.pack_into("<Q", body, i * RECORD_SIZE, i)
    stamp_crcs(body, n)
    seg = tmp_path / segment_name(0)
    header = SegmentHeader(
        0, 0, T0, 1, SEG_FLAG_CLOSED, n, n, n, chain_digest(EMPTY_CHAIN, 0, body), EMPTY_CHAIN, "h"
    )
    seg.write_bytes(pack_header(header) + bytes(body))
    count = sum(1 for _ in read_audit_log(seg))  # the read rate is BENCHMARKS.md's, not a test's
    assert count == n
    assert verify_audit_log(seg).ok


def test_pure_python_crc_agrees_with_the_native_one():
    from killswitch_audit import format as fmt

    buf = bytearray(b"".join(trades(0, 100)))
    buf[70 * RECORD_SIZE + 3] ^= 1
    assert fmt.first_bad_record(buf, 100) == 70
    for n in (0, 1, 59, 60, 64, 1000):
        assert fmt.crc32c_py(bytes(buf[:n])) == fmt.crc32c(bytes(buf[:n]))


# ------------------------------------------------------------------ golden logs (issue 12)

GOLDEN = Path(__file__).parent / "data" / "golden"
GOLDEN_KEY = bytes(range(32))  # the key of tests/data/golden/keyed (tests/data/make_golden.py)
GOLDEN_LOGS = ("plain", "keyed", "gaps", "torn", "recovered")


def _reference():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "reference_decoder", Path(__file__).parent / "reference_decoder.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _golden_expected():
    import json

    return json.loads((GOLDEN / "expected.json").read_text())


@pytest.mark.parametrize("name", GOLDEN_LOGS)
def test_golden_log_decodes_identically_with_the_reference_decoder(name):
    d = GOLDEN / name
    key = GOLDEN_KEY if name == "keyed" else None
    ref = _reference().decode_log(d, key)
    ours = [{**r.to_dict(), "kind": int(r.kind)} for r in read_audit_log(d)]
    assert ours == ref["records"]
    exp = _golden_expected()[name]
    assert len(ours) == exp["records"]
    assert sorted({r["kind"] for r in ours}) == exp["kinds"]
    assert [s["chain_head"] for s in ref["segments"]] == exp["heads"]
    assert ref["chain_ok"] == exp["chain_ok"]
    report = verify_audit_log(d, key=key)
    assert report.chain_ok == exp["chain_ok"], str(report)
    assert exp["torn"] == [[os.path.basename(f), o] for f, o in ref["torn"]]
    if name != "recovered":  # there verify also names the torn slot recovery sealed off
        assert exp["torn"] == [[os.path.basename(f), o] for f, o in report.torn_tails]
    assert report.records == len(ours)


def test_golden_logs_hold_every_record_kind():
    exp = _golden_expected()
    seen = {k for name in GOLDEN_LOGS for k in exp[name]["kinds"]}
    assert seen == {int(k) for k in RecordKind}


def test_golden_plain_log_verifies_and_keyed_needs_its_key():
    assert verify_audit_log(GOLDEN / "plain").ok
    assert verify_audit_log(GOLDEN / "keyed", key=GOLDEN_KEY).ok
    assert not verify_audit_log(GOLDEN / "keyed").ok
    assert not verify_audit_log(GOLDEN / "keyed", key=bytes(32)).ok
    # the recovered log: the torn record stays in the file after `committed` of the sealed
    # segment; it is never read, and verify reports it as the torn tail it was
    rec = verify_audit_log(GOLDEN / "recovered")
    assert not rec.ok and rec.chain_ok and not rec.corrupt
    seg0 = str(GOLDEN / "recovered" / segment_name(0))
    assert rec.torn_tails == [(seg0, HEADER_SIZE + 12 * RECORD_SIZE)], str(rec)


def test_numpy_bulk_path_matches_the_records():
    np = pytest.importorskip("numpy")
    from killswitch_audit.reader import read_audit_array

    arr = read_audit_array(GOLDEN / "plain")
    recs = list(read_audit_log(GOLDEN / "plain"))
    assert arr.dtype == np.dtype(NUMPY_DTYPE_DESCR)
    assert arr["seq"].tolist() == [r.seq for r in recs]
    assert arr["c"].tolist() == [r.c for r in recs]
    trades_only = read_audit_array(GOLDEN / "plain", kinds=["TRADE"])
    assert set(trades_only["kind"].tolist()) == {int(RecordKind.TRADE)}


# ------------------------------------------------------------------ issue 11, reader rows


def _real_log(d, records=300):
    """A real log from the native logger: closed segments with room after `committed`."""
    from killswitch_audit import _native

    lg = _native.AuditLogger(d, segment_size_mb=1)
    for i in range(records):
        lg.audit_trade(7, i, 10_000 + i, i)
    lg.audit_kill_switch(1, 7, 5, -5)
    lg.close()
    return sorted(Path(d).glob("*.seg"))


def _header(seg):
    return unpack_header(Path(seg).read_bytes()[:HEADER_SIZE], path=str(seg))


def test_forged_records_after_committed_of_a_closed_segment_are_never_returned(tmp_path):
    """Issue 11 row 4: RESET + STATE_CHANGE + TEXT forged with valid CRCs right after
    `committed` of a CLOSED segment."""
    seg = _real_log(tmp_path / "log")[-1]
    h = _header(seg)
    assert h.closed and h.committed < h.capacity
    top = max(r.seq for r in read_audit_log(tmp_path / "log"))
    forged = [
        rec(top + 1, RecordKind.RESET, code=0, a=2, b=0),
        rec(top + 2, RecordKind.STATE_CHANGE, code=0, a=2, b=4),
        rec(top + 3, RecordKind.TEXT, c=top + 1),
    ]
    at = HEADER_SIZE + h.committed * RECORD_SIZE
    with open(seg, "r+b") as f:
        f.seek(at)
        f.write(b"".join(forged))
    got = list(read_audit_log(tmp_path / "log"))
    assert max(r.seq for r in got) == top
    assert not [r for r in got if r.kind in (RecordKind.RESET, RecordKind.STATE_CHANGE)]
    report = verify_audit_log(tmp_path / "log")
    assert not report.ok
    assert report.corrupt[0][:2] == (str(seg), at), str(report)
    assert "3 non-zero record slot(s) (3 with a valid CRC) after committed" in report.corrupt[0][2]


def test_verify_fails_where_there_is_no_audit_log(tmp_path):
    report = verify_audit_log(tmp_path)
    assert not report.ok and "no audit log here" in report.first_error[2]


def test_bytes_past_capacity_are_reported(tmp_path):
    seg = _real_log(tmp_path / "log")[0]
    size = seg.stat().st_size
    assert verify_audit_log(tmp_path / "log").ok
    with open(seg, "ab") as f:
        f.write(b"garbage appended")
    report = verify_audit_log(tmp_path / "log")
    assert not report.ok
    assert report.first_error[:2] == (str(seg), size), str(report)
    assert "past the segment's capacity" in report.first_error[2]


def test_salvage_returns_the_intact_records_after_damage_flagged(tmp_path):
    seg = _real_log(tmp_path / "log")[0]
    n_before = len(list(read_audit_log(tmp_path / "log")))
    bad = HEADER_SIZE + 100 * RECORD_SIZE
    with open(seg, "r+b") as f:
        f.seek(bad + 40)
        f.write(b"\xff")
    with pytest.raises(AuditLogCorrupt) as e:
        list(read_audit_log(tmp_path / "log"))
    assert (e.value.path, e.value.offset) == (str(seg), bad)
    got = list(read_audit_log(tmp_path / "log", salvage=True))
    assert len(got) == n_before - 1
    assert not any(r.salvaged for r in got[:100])
    assert all(r.salvaged for r in got[100:]) and got[100].seq == got[99].seq + 2


def test_crashed_session_loss_is_reported_as_a_range_up_to_its_mark(tmp_path):
    """Session A (pid 11) dies after seq 9 with seq_reserved=100; session B starts at 100.
    Seqs 10..99 may have been handed out by A and lost with its rings: a range, not OK."""
    from dataclasses import replace

    flags = REC_FLAG_SYSTEM
    a = [rec(0, RecordKind.SESSION_START, flags, a=11, b=0, c=1), *trades(1, 9)]
    final = write_segment(tmp_path / segment_name(0), a)
    b = [rec(100, RecordKind.SESSION_START, flags, a=12, b=100, c=1), *trades(101, 2)]
    b.append(rec(103, RecordKind.SESSION_END, flags, a=3))
    write_segment(tmp_path / segment_name(1), b, index=1, prev_chain=final)
    seg0 = tmp_path / segment_name(0)
    raw = seg0.read_bytes()
    header = replace(unpack_header(raw[:HEADER_SIZE]), seq_reserved=100)
    seg0.write_bytes(pack_header(header) + raw[HEADER_SIZE:])  # header fields are not chained
    report = verify_audit_log(tmp_path)
    assert report.possible_loss == [(11, 10, 100)], str(report)
    assert report.unaccounted_missing == [] and report.chain_ok and not report.ok
    assert "seqs [10, 100) may have been handed out and lost" in str(report)


@pytest.mark.parametrize(
    "enum", ["RecordKind", "KillSwitchReason", "TradingState", "Ring", "ClockSync"]
)
def test_str_of_every_enum_member_is_its_name(enum):
    """Issue 17 point 5: IntEnum.__str__ became int.__str__ in Python 3.11."""
    import killswitch_audit.format as fmt

    for m in getattr(fmt, enum):
        assert str(m) == m.name and f"{m}" == m.name and f"{m:>20}" == f"{m.name:>20}"
        assert f"{m:d}" == str(int(m)) and repr(int(m)) == str(int(m))
