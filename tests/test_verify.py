"""`verify`: sequence accounting (GAP records, the other ring, duplicates), the open last
segment, deleted segments and broken chains, keyed chains."""

from __future__ import annotations

import os

from format_support import (
    rec,
    trades,
    write_segment,
)
from killswitch_audit.format import (
    EMPTY_CHAIN,
    REC_FLAG_EMERGENCY,
    REC_FLAG_SYSTEM,
    ChainHasher,
    RecordKind,
    chain_digest,
    segment_name,
)
from killswitch_audit.reader import (
    export_chain_head,
    verify_audit_log,
)


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
