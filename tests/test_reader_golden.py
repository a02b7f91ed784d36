"""The reader against fuzzed segments, a million records, the golden logs of tests/data (decoded
identically by the stdlib reference decoder), the numpy bulk path, forged bytes after
`committed`, salvage, crashed-session loss ranges."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from format_support import (
    T0,
    rec,
    trades,
    write_segment,
)
from killswitch_audit.errors import AuditLogCorrupt
from killswitch_audit.format import (
    EMPTY_CHAIN,
    HEADER_SIZE,
    NUMPY_DTYPE_DESCR,
    REC_FLAG_SYSTEM,
    RECORD_SIZE,
    SEG_FLAG_CLOSED,
    RecordKind,
    SegmentHeader,
    chain_digest,
    pack_header,
    segment_name,
    stamp_crcs,
    unpack_header,
    unpack_record,
)
from killswitch_audit.reader import (
    read_audit_log,
    verify_audit_log,
)

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

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
