"""Tamper evidence (issue 7) on a log written by the native engine.

One multi-segment log (1 MiB segments, ~60 000 records through both rings) is written once per
module; each test copies it, changes it the way an attacker or a faulty disk would, and checks
that `verify_audit_log` fails and names the first bad file and byte offset. The untouched copy
verifies clean; a keyed (HMAC) chain cannot be recomputed without the key; the exported chain
head anchors the end of the log so that even a consistent rewrite is caught.
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest
from killswitch_audit import NATIVE_AVAILABLE, read_audit_log, verify_audit_log
from killswitch_audit.format import (
    CRC_SPAN,
    EMPTY_CHAIN,
    HDR_OFF_CHAIN_HEAD,
    HDR_OFF_CHAIN_RECORDS,
    HDR_OFF_COMMITTED,
    HDR_OFF_FLAGS,
    HDR_OFF_PREV_CHAIN,
    HEADER_SIZE,
    RECORD_SIZE,
    SEG_FLAG_KEYED,
    ChainHasher,
    crc32c,
)
from killswitch_audit.reader import export_chain_head

pytestmark = pytest.mark.skipif(not NATIVE_AVAILABLE, reason="native extension not built")

KEY = bytes(range(32))
RECORDS = 60_000


def _write_log(directory: Path, hmac_key: bytes | None = None) -> None:
    from killswitch_audit import _native

    lg = _native.AuditLogger(directory, segment_size_mb=1, hmac_key=hmac_key)
    for i in range(RECORDS):
        if i % 50 == 0:
            lg.audit_kill_switch(1 + i % 7, i & 0xFFFF, i, -i)
        else:
            lg.audit_trade(i & 0xFFFF, i, 10_000 + i, i)
        if i % 4096 == 0:
            assert lg.flush(timeout=10)
    lg.close()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tamper") / "log"
    _write_log(d)
    assert len(_segs(d)) >= 4, "the fixture must span several segments"
    return d


@pytest.fixture(scope="module")
def pristine_keyed(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tamper_keyed") / "log"
    _write_log(d, hmac_key=KEY)
    return d


@pytest.fixture
def log(pristine, tmp_path) -> Path:
    d = tmp_path / "log"
    shutil.copytree(pristine, d)
    return d


@pytest.fixture
def keyed_log(pristine_keyed, tmp_path) -> Path:
    d = tmp_path / "log"
    shutil.copytree(pristine_keyed, d)
    return d


def _segs(d: Path) -> list[Path]:
    return sorted(d.glob("*.seg"))


def _committed(seg: Path) -> int:
    with open(seg, "rb") as f:
        f.seek(HDR_OFF_COMMITTED)
        return struct.unpack("<Q", f.read(8))[0]


def _rec_off(i: int) -> int:
    return HEADER_SIZE + i * RECORD_SIZE


def _read_rec(seg: Path, i: int) -> bytearray:
    with open(seg, "rb") as f:
        f.seek(_rec_off(i))
        return bytearray(f.read(RECORD_SIZE))


def _write_at(seg: Path, offset: int, data: bytes) -> None:
    with open(seg, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _restamp(rec: bytearray) -> bytearray:
    """Recomputes the record's CRC, as an attacker who knows the format would."""
    struct.pack_into("<I", rec, CRC_SPAN, crc32c(bytes(rec[:CRC_SPAN])))
    return rec


def _records_region(seg: Path, n: int) -> bytearray:
    with open(seg, "rb") as f:
        f.seek(HEADER_SIZE)
        return bytearray(f.read(n * RECORD_SIZE))


def _first_error(d: Path, **kw) -> tuple[str, int, str]:
    report = verify_audit_log(d, **kw)
    assert not report.ok, "tampering went unnoticed:\n" + str(report)
    err = report.first_error
    assert err is not None, str(report)
    return err


# ------------------------------------------------------------------------------------------


def test_untouched_log_verifies_clean(log):
    report = verify_audit_log(log)
    assert report.ok, str(report)
    assert report.chain_ok and not report.chain_errors and not report.corrupt
    assert report.segments == len(_segs(log)) >= 4
    assert report.chain_head == export_chain_head(log)["head"]


def test_edited_record_with_broken_crc_is_named_by_file_and_offset(log):
    seg = _segs(log)[1]
    i = 1234
    rec = _read_rec(seg, i)
    rec[40] ^= 0x01  # one bit of the price
    _write_at(seg, _rec_off(i), bytes(rec))
    f, off, _ = _first_error(log)
    assert (f, off) == (str(seg), _rec_off(i))
    # the reader yields the records before the damage, then raises with the same place
    from killswitch_audit import AuditLogCorrupt

    with pytest.raises(AuditLogCorrupt) as exc:
        for _ in read_audit_log(log):
            pass
    assert (exc.value.path, exc.value.offset) == (str(seg), _rec_off(i))


def test_edited_record_with_recomputed_crc_breaks_the_chain_of_its_segment(log):
    seg = _segs(log)[1]
    rec = _read_rec(seg, 777)
    struct.pack_into("<q", rec, 40, 1)  # the price becomes 1 cent, CRC fixed
    _write_at(seg, _rec_off(777), bytes(_restamp(rec)))
    f, off, why = _first_error(log)
    assert f == str(seg), why
    assert off == HDR_OFF_CHAIN_HEAD, why


def test_deleted_record_is_detected(log):
    """A record cut out of a closed segment, later ones shifted down, zero at the end."""
    seg = _segs(log)[2]
    n = _committed(seg)
    region = _records_region(seg, n)
    i = 500
    del region[i * RECORD_SIZE : (i + 1) * RECORD_SIZE]
    _write_at(seg, HEADER_SIZE, bytes(region) + bytes(RECORD_SIZE))
    f, off, why = _first_error(log)
    assert f == str(seg), why
    # the hole at the end of the committed extent is the first bad place
    assert off == _rec_off(n - 1), why


def test_deleted_record_with_header_adjusted_breaks_the_chain(log):
    """The same deletion, and the attacker also lowers `committed` and `chain_records`."""
    seg = _segs(log)[2]
    n = _committed(seg)
    region = _records_region(seg, n)
    del region[500 * RECORD_SIZE : 501 * RECORD_SIZE]
    _write_at(seg, HEADER_SIZE, bytes(region) + bytes(RECORD_SIZE))
    _write_at(seg, HDR_OFF_COMMITTED, struct.pack("<Q", n - 1))
    _write_at(seg, HDR_OFF_CHAIN_RECORDS, struct.pack("<Q", n - 1))
    f, off, why = _first_error(log)
    # the chain breaks; the seq hole points at the record where the deleted one was
    assert (f, off) == (str(seg), _rec_off(500)), why
    assert "chain head" in why


def test_inserted_record_is_detected(log):
    """A forged record (valid CRC, plausible seq) inserted into a closed segment."""
    seg = _segs(log)[1]
    n = _committed(seg)
    region = _records_region(seg, n)
    forged = _read_rec(seg, 100)
    struct.pack_into("<q", forged, 32, 999_999)  # quantity
    _restamp(forged)
    region[101 * RECORD_SIZE : 101 * RECORD_SIZE] = forged
    _write_at(seg, HEADER_SIZE, bytes(region[: n * RECORD_SIZE]))
    f, _off, why = _first_error(log)
    assert f == str(seg), why
    report = verify_audit_log(log)
    assert not report.chain_ok and report.duplicates, str(report)


def test_reordered_records_break_the_chain(log):
    seg = _segs(log)[2]
    a, b = _read_rec(seg, 10), _read_rec(seg, 11)
    _write_at(seg, _rec_off(10), bytes(b))
    _write_at(seg, _rec_off(11), bytes(a))
    f, off, why = _first_error(log)
    # the chain breaks; the out-of-order seqs point at the first moved record
    assert (f, off) == (str(seg), _rec_off(10)), why
    assert "chain head" in why


def test_truncated_segment_file_is_named(log):
    seg = _segs(log)[-1]
    n = _committed(seg)
    cut = _rec_off(n - 3)
    os.truncate(seg, cut)
    f, off, why = _first_error(log)
    assert (f, off) == (str(seg), cut), why


def test_truncated_records_with_header_adjusted_break_the_chain(log):
    """Trailing records of a middle segment zeroed and its header made to agree."""
    seg = _segs(log)[1]
    n = _committed(seg)
    _write_at(seg, _rec_off(n - 5), bytes(5 * RECORD_SIZE))
    _write_at(seg, HDR_OFF_COMMITTED, struct.pack("<Q", n - 5))
    _write_at(seg, HDR_OFF_CHAIN_RECORDS, struct.pack("<Q", n - 5))
    f, off, why = _first_error(log)
    assert (f, off) == (str(seg), HDR_OFF_CHAIN_HEAD), why


def test_deleted_middle_segment_is_named(log):
    segs = _segs(log)
    segs[1].unlink()
    f, off, why = _first_error(log)
    assert (f, off) == (str(segs[2]), HDR_OFF_PREV_CHAIN), why
    assert "missing" in why


def test_deleted_first_segment_is_named(log):
    segs = _segs(log)
    segs[0].unlink()
    f, off, why = _first_error(log)
    assert (f, off) == (str(segs[1]), HDR_OFF_PREV_CHAIN), why


def test_deleted_last_segment_is_caught_by_the_exported_head(log):
    """Dropping the newest segment leaves a consistent shorter chain: only an anchor kept
    elsewhere (the exported head) can tell; so compare with it."""
    anchor = export_chain_head(log)
    _segs(log)[-1].unlink()
    report = verify_audit_log(log)
    assert report.chain_ok  # what is left is self-consistent ...
    assert report.chain_head != anchor["head"]  # ... but it no longer ends at the anchor
    assert export_chain_head(log)["segment"] < anchor["segment"]


def test_edited_prev_chain_in_a_header_is_named(log):
    seg = _segs(log)[2]
    with open(seg, "rb") as f:
        f.seek(HDR_OFF_PREV_CHAIN)
        prev = bytearray(f.read(32))
    prev[0] ^= 0xFF
    _write_at(seg, HDR_OFF_PREV_CHAIN, bytes(prev))
    f, off, why = _first_error(log)
    assert (f, off) == (str(seg), HDR_OFF_PREV_CHAIN), why


def test_segment_swapped_for_another_logs_segment_is_detected(log, tmp_path):
    """A segment replaced by the same-index segment of another (valid) log."""
    other = tmp_path / "other"
    _write_log(other)
    shutil.copy(_segs(other)[1], _segs(log)[1])
    f, _off, why = _first_error(log)
    assert f == str(_segs(log)[1]), why


def _rewrite_chain(d: Path, from_index: int, key: bytes | None) -> None:
    """What an attacker with write access does after editing records: recompute the chain
    of every segment from `from_index` on, with `key` (None: plain SHA-256)."""
    segs = _segs(d)
    prev = None
    for seg in segs:
        with open(seg, "r+b") as f:
            hdr = bytearray(f.read(HEADER_SIZE))
            index = struct.unpack_from("<Q", hdr, 16)[0]
            n = struct.unpack_from("<Q", hdr, HDR_OFF_COMMITTED)[0]
            if index < from_index:
                prev = None
                continue
            if prev is not None:
                hdr[HDR_OFF_PREV_CHAIN : HDR_OFF_PREV_CHAIN + 32] = prev
            body = f.read(n * RECORD_SIZE)
            h = ChainHasher(bytes(hdr[HDR_OFF_PREV_CHAIN : HDR_OFF_PREV_CHAIN + 32]), index, key)
            h.update(body)
            head = h.digest()
            hdr[HDR_OFF_CHAIN_HEAD : HDR_OFF_CHAIN_HEAD + 32] = head
            f.seek(0)
            f.write(hdr)
            prev = head


def test_unkeyed_chain_rewrite_is_caught_only_by_the_exported_head(log):
    """Without a key anyone can recompute SHA-256: an edit plus a full chain rewrite passes
    `verify`, which is why the head is exported and anchored elsewhere (or the chain keyed)."""
    anchor = export_chain_head(log)
    seg = _segs(log)[1]
    rec = _read_rec(seg, 42)
    struct.pack_into("<q", rec, 40, 7)
    _write_at(seg, _rec_off(42), bytes(_restamp(rec)))
    _rewrite_chain(log, 1, key=None)
    report = verify_audit_log(log)
    assert report.chain_ok, str(report)
    assert report.chain_head != anchor["head"], "the anchor must expose the rewrite"


def test_keyed_log_verifies_with_its_key_only(keyed_log):
    report = verify_audit_log(keyed_log, key=KEY)
    assert report.ok and report.keyed, str(report)
    assert not verify_audit_log(keyed_log).ok  # no key: the chain cannot be checked
    wrong = verify_audit_log(keyed_log, key=bytes(32))
    assert not wrong.ok and not wrong.chain_ok
    assert wrong.first_error[0] == str(_segs(keyed_log)[0])


def test_keyed_chain_cannot_be_recomputed_without_the_key(keyed_log):
    seg = _segs(keyed_log)[2]
    rec = _read_rec(seg, 9)
    struct.pack_into("<q", rec, 32, -5)
    _write_at(seg, _rec_off(9), bytes(_restamp(rec)))
    # the attacker recomputes with plain SHA-256, and with a guessed key: both fail
    for guess in (None, b"guessed-key"):
        _rewrite_chain(keyed_log, 2, key=guess)
        f, off, why = _first_error(keyed_log, key=KEY)
        assert (f, off) == (str(seg), HDR_OFF_CHAIN_HEAD), why
    # with the key the rewrite would pass: the key is the whole protection
    _rewrite_chain(keyed_log, 2, key=KEY)
    assert verify_audit_log(keyed_log, key=KEY).chain_ok


def test_chain_head_export(log):
    head = export_chain_head(log)
    last = _segs(log)[-1]
    assert head["file"] == str(last)
    assert head["closed"] and not head["keyed"]
    assert head["records"] == _committed(last) == head["total_records"]
    # recompute independently from the bytes: prev chain of the last segment + its records
    with open(last, "rb") as f:
        hdr = f.read(HEADER_SIZE)
        body = f.read(head["records"] * RECORD_SIZE)
    h = ChainHasher(hdr[HDR_OFF_PREV_CHAIN : HDR_OFF_PREV_CHAIN + 32], head["segment"])
    h.update(body)
    assert h.digest().hex() == head["head"] == verify_audit_log(log).chain_head
    # the first segment's chain starts from zeros
    with open(_segs(log)[0], "rb") as f:
        f.seek(HDR_OFF_PREV_CHAIN)
        assert f.read(32) == EMPTY_CHAIN


def _rewrite_unkeyed(seg: Path, index: int, prev: bytes) -> bytes:
    """Clears the KEYED flag and recomputes a plain SHA-256 chain, as an attacker without the
    key would (issue 11 row 8). Returns the segment's new final chain value."""
    n = _committed(seg)
    with open(seg, "rb") as f:
        f.seek(HDR_OFF_FLAGS)
        flags = struct.unpack("<I", f.read(4))[0]
    head = ChainHasher(prev, index)
    head.update(bytes(_records_region(seg, n)))
    _write_at(seg, HDR_OFF_FLAGS, struct.pack("<I", flags & ~SEG_FLAG_KEYED))
    _write_at(seg, HDR_OFF_PREV_CHAIN, prev)
    _write_at(seg, HDR_OFF_CHAIN_HEAD, head.digest())
    return head.digest()


def test_keyed_log_rewritten_unkeyed_fails_verify_with_the_key(keyed_log):
    prev = EMPTY_CHAIN
    for i, seg in enumerate(_segs(keyed_log)):
        prev = _rewrite_unkeyed(seg, i, prev)
    # consistent without a key (only the key, or an exported head, can tell)...
    assert verify_audit_log(keyed_log).ok
    # ...but whoever verifies with the key sees every segment is not an HMAC chain
    f, off, why = _first_error(keyed_log, key=KEY)
    assert (f, off) == (str(_segs(keyed_log)[0]), HDR_OFF_FLAGS) and "not KEYED" in why, why


def test_one_segment_with_its_keyed_flag_cleared_fails_with_or_without_the_key(keyed_log):
    segs = _segs(keyed_log)
    with open(segs[-1], "rb") as f:
        f.seek(HDR_OFF_PREV_CHAIN)
        prev = f.read(32)
    _rewrite_unkeyed(segs[-1], len(segs) - 1, prev)
    f, off, why = _first_error(keyed_log, key=KEY)
    assert (f, off) == (str(segs[-1]), HDR_OFF_FLAGS), why
    report = verify_audit_log(keyed_log)
    assert any(
        e[0] == str(segs[-1]) and "unkeyed segment in a keyed log" in e[2]
        for e in report.chain_errors
    ), str(report)
