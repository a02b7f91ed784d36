"""`Record`, the native class `read_audit_log` returns: it behaves as the frozen value it
replaced (equality, hashing, pickling, repr, immutability, typed errors naming the field)."""

from __future__ import annotations

import copy
import pickle
import sys

import pytest
from killswitch_audit import AuditLogger, KillSwitchReason, Record, RecordKind, read_audit_log
from killswitch_audit.format import pack_record, unpack_record


def _rec(**over: int) -> Record:
    fields = dict(
        seq=7, wall_ns=1_700_000_000_123_456_789, mono_ns=99, kind=RecordKind.KILL_SWITCH,
        flags=2, code=int(KillSwitchReason.MANUAL), thread_id=5, a=-3, b=-250, c=2**64 - 1,
        symbol_id=42, crc32c=0,
    )  # fmt: skip
    fields.update(over)
    return Record(**fields)


def test_value_semantics():
    r = _rec()
    assert r == _rec() and hash(r) == hash(_rec())
    assert r != _rec(seq=8) and r != _rec(salvaged=True)
    assert len({r, _rec(), _rec(seq=8)}) == 2
    assert (r == (7,)) is False  # another type is never equal
    for clone in (pickle.loads(pickle.dumps(r)), copy.copy(r), copy.deepcopy(r)):
        assert clone == r and type(clone) is Record
    with pytest.raises(AttributeError):
        r.seq = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        r.anything = 1  # type: ignore[attr-defined]


def test_repr_names_every_field_and_the_enum():
    text = repr(_rec())
    assert text.startswith("Record(seq=7, wall_ns=1700000000123456789, mono_ns=99, kind=")
    assert "RecordKind.KILL_SWITCH" in text and text.endswith("salvaged=False)")


def test_bad_values_are_named():
    with pytest.raises(OverflowError, match="kind"):
        _rec(kind=256)
    with pytest.raises((OverflowError, TypeError), match="seq"):
        _rec(seq=-1)
    with pytest.raises(TypeError, match="a"):
        _rec(a="x")  # type: ignore[arg-type]


def test_round_trip_through_bytes_and_unknown_kinds():
    raw = pack_record(1, 2, 3, 200, 0, 200, 1, 2**63 - 1, -(2**63), 0, 0)
    r = unpack_record(raw)
    assert r.kind == 200 and not isinstance(r.kind, RecordKind)
    assert r.to_bytes() == raw and r.crc_ok and r.to_dict()["kind"] == 200
    assert r.reason_code == 200 and not isinstance(r.reason_code, KillSwitchReason)
    assert unpack_record(raw[:60] + b"\0\0\0\0").crc_ok is False


def test_records_read_back_are_records(tmp_path):
    with AuditLogger(str(tmp_path / "log")) as lg:
        lg.audit_trade(1, 10, 10_125, 77)
        lg.flush(5.0)
    recs = [r for r in read_audit_log(tmp_path / "log") if r.kind == RecordKind.TRADE]
    assert len(recs) == 1 and type(recs[0]) is Record
    assert (recs[0].quantity, recs[0].price_cents, recs[0].order_id) == (10, 10_125, 77)


def test_pattern_matching_and_replace_work_as_on_the_dataclass():
    r = _rec()
    assert Record.__match_args__[:4] == ("seq", "wall_ns", "mono_ns", "kind")
    if sys.version_info >= (3, 10):  # `match` is a syntax error before 3.10: compiled here
        src = "match r:\n    case Record(seq, _, mono, kind):\n        got = (seq, mono, kind)\n"
        ns: dict = {"r": r, "Record": Record}
        exec(compile(src, "<match>", "exec"), ns)
        assert ns["got"] == (7, 99, RecordKind.KILL_SWITCH)
    changed = r.__replace__(seq=8, salvaged=True)  # copy.replace(r, ...) on 3.13
    assert (changed.seq, changed.salvaged, changed.a) == (8, True, r.a) and r.seq == 7
    assert r.__replace__() == r
    with pytest.raises(TypeError, match="no field"):
        r.__replace__(nope=1)
    with pytest.raises(OverflowError, match="kind"):
        r.__replace__(kind=999)
