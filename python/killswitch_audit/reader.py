"""Read and verify an audit log (a directory of segments, or one segment file), per
docs/FORMAT.md. Pure Python; uses the native CRC-32C when the extension is present.

Reading rules (FORMAT.md): records `[0, committed)` of a segment must all be valid, and a bad
one there raises `AuditLogCorrupt` naming the file and byte offset; records at or after
`committed` are read while their CRC is valid and they are not all zero; the first one that
fails ends the segment. If it is not all zero it is a *torn tail* (a record half written when
the writer died): skipped by default, reported by `verify_audit_log`.

Nothing in a file is trusted for an allocation: sizes come from the file's real length, so a
garbage header can produce `AuditLogCorrupt` or fewer records, never a huge allocation.
"""

from __future__ import annotations

import logging
import mmap
import os
import time
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .errors import AuditLogCorrupt
from .format import (
    EMPTY_CHAIN,
    HDR_OFF_CHAIN_HEAD,
    HDR_OFF_CHAIN_RECORDS,
    HDR_OFF_COMMITTED,
    HDR_OFF_FLAGS,
    HDR_OFF_PREV_CHAIN,
    HDR_OFF_SEGMENT_INDEX,
    HEADER_SIZE,
    RECORD_SIZE,
    RECORD_STRUCT,
    STATS_SIZE,
    ChainHasher,
    ClockSync,
    Record,
    RecordKind,
    SegmentHeader,
    first_bad_record,
    kind_of,
    make_record,
    parse_hmac_key,
    parse_segment_name,
    unpack_header,
    unpack_stats,
)

__all__ = [
    "VerifyReport",
    "export_chain_head",
    "list_segments",
    "read_audit_log",
    "read_stats",
    "verify_audit_log",
]

log = logging.getLogger("killswitch_audit.reader")

PathLike = Union[str, "os.PathLike[str]"]

_KIND_BY_VALUE = {int(k): k for k in RecordKind}
_K_GAP = int(RecordKind.GAP)
_K_CLOCK = int(RecordKind.CLOCK)
_K_SESSION_START = int(RecordKind.SESSION_START)
_K_SESSION_END = int(RecordKind.SESSION_END)

# tail scan beyond `committed`: chunks of records, growing (a running writer's open segment
# is mostly zeros; the scan stops at the first zero record and never checks the rest)
_TAIL_CHUNK_MIN = 256
_TAIL_CHUNK_MAX = 1 << 16


# --------------------------------------------------------------------------------------------
# Segment scan (the one place that applies the reading rules)


@dataclass
class _Scan:
    """What one segment file holds, after applying the reading rules. Never raises."""

    path: str
    name_index: Optional[int]
    file_size: int = 0
    header: Optional[SegmentHeader] = None
    #: bytes of the records `[0, n_valid)` (plus the torn record, if any, at the end)
    data: bytes = b""
    n_valid: int = 0
    #: byte offset of a torn record after `committed`, if any
    torn_offset: Optional[int] = None
    #: (byte offset, why) of the first corruption, if any (records before it are valid)
    corrupt: Optional[tuple[int, str]] = None

    @property
    def torn_record(self) -> Optional[bytes]:
        if self.torn_offset is None:
            return None
        return self.data[self.n_valid * RECORD_SIZE : (self.n_valid + 1) * RECORD_SIZE]


def _is_zero(buf: Union[bytes, memoryview]) -> bool:
    return not any(buf)


def _scan_segment(path: str, name_index: Optional[int]) -> _Scan:
    scan = _Scan(path=path, name_index=name_index)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        scan.corrupt = (0, f"cannot open: {e.strerror or e}")
        return scan
    try:
        size = os.fstat(fd).st_size
        scan.file_size = size
        if size < HEADER_SIZE:
            scan.corrupt = (
                size,
                f"file is {size} bytes, shorter than the {HEADER_SIZE}-byte segment header",
            )
            return scan
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mm:
            _scan_mapped(scan, mm, size)
    except OSError as e:
        scan.corrupt = (0, f"cannot read: {e.strerror or e}")
    finally:
        os.close(fd)
    return scan


def _scan_mapped(scan: _Scan, mm: mmap.mmap, size: int) -> None:
    path = scan.path
    try:
        h = unpack_header(mm[:HEADER_SIZE], path=path)
    except AuditLogCorrupt as e:
        scan.corrupt = (e.offset, str(e.args[0]).split(": ", 2)[-1])
        return
    scan.header = h
    if scan.name_index is not None and h.segment_index != scan.name_index:
        scan.corrupt = (
            HDR_OFF_SEGMENT_INDEX,
            f"header says segment {h.segment_index} but the file is named for "
            f"segment {scan.name_index}",
        )
        return
    available = (size - HEADER_SIZE) // RECORD_SIZE  # whole records the file holds
    slots = min(h.capacity, available)
    committed = h.committed
    if committed > h.capacity:
        scan.corrupt = (
            HDR_OFF_COMMITTED,
            f"committed count {committed} exceeds the segment capacity {h.capacity}",
        )
        return
    below = min(committed, available)
    mv = memoryview(mm)
    try:
        region = mv[HEADER_SIZE : HEADER_SIZE + below * RECORD_SIZE]
        bad = first_bad_record(region, below)
        region.release()
        if bad >= 0:
            off = HEADER_SIZE + bad * RECORD_SIZE
            rec = mm[off : off + RECORD_SIZE]
            what = "is all zero" if _is_zero(rec) else "fails its CRC-32C check"
            scan.n_valid = bad
            scan.data = mm[HEADER_SIZE:off]
            scan.corrupt = (off, f"record {bad} (below committed={committed}) {what}")
            return
        if committed > available:
            off = HEADER_SIZE + available * RECORD_SIZE
            scan.n_valid = available
            scan.data = mm[HEADER_SIZE:off]
            scan.corrupt = (
                off,
                f"file truncated: committed={committed} records but the file holds "
                f"only {available} ({size} bytes)",
            )
            return
        # beyond committed: read while the CRC is valid and the record is not all zero
        n = committed
        chunk = _TAIL_CHUNK_MIN
        while n < slots:
            count = min(chunk, slots - n)
            start = HEADER_SIZE + n * RECORD_SIZE
            region = mv[start : start + count * RECORD_SIZE]
            bad = first_bad_record(region, count)
            region.release()
            if bad < 0:
                n += count
                chunk = min(chunk * 2, _TAIL_CHUNK_MAX)
                continue
            n += bad
            off = HEADER_SIZE + n * RECORD_SIZE
            if not _is_zero(mm[off : off + RECORD_SIZE]):
                scan.torn_offset = off
            break
        scan.n_valid = n
        end = HEADER_SIZE + n * RECORD_SIZE
        if scan.torn_offset is not None:
            end += RECORD_SIZE
        scan.data = mm[HEADER_SIZE:end]
    finally:
        mv.release()


# --------------------------------------------------------------------------------------------
# Listing


def list_segments(path: PathLike) -> list[tuple[Optional[int], str]]:
    """(index, file path) of the segments of a log directory in index order, or of one file.

    In a directory, only `NNNNNNNNNNNN.seg` files count (`*.seg.next` and others are ignored).
    Raises FileNotFoundError when `path` does not exist.
    """
    p = os.fspath(path)
    if os.path.isdir(p):
        out = []
        for name in os.listdir(p):
            idx = parse_segment_name(name)
            if idx is None:
                continue
            out.append((idx, os.path.join(p, name)))
        out.sort()
        return out  # type: ignore[return-value]
    if not os.path.exists(p):
        raise FileNotFoundError(f"no such audit log: {p}")
    return [(parse_segment_name(os.path.basename(p)), p)]


# --------------------------------------------------------------------------------------------
# Reader


def _kind_set(kinds: Optional[Iterable[Any]]) -> Optional[frozenset]:
    if kinds is None:
        return None
    if isinstance(kinds, (int, str)):
        kinds = [kinds]
    out = set()
    for k in kinds:
        if isinstance(k, str):
            try:
                k = RecordKind[k.strip().upper()]
            except KeyError:
                raise ValueError(f"unknown record kind {k!r}") from None
        out.add(int(k))
    return frozenset(out)


def _records(data: bytes, count: int, kset: Optional[frozenset]) -> Iterator[Record]:
    kmap = _KIND_BY_VALUE
    make = make_record
    view = memoryview(data)[: count * RECORD_SIZE]
    try:
        for t in RECORD_STRUCT.iter_unpack(view):
            k = t[3]
            if kset is not None and k not in kset:
                continue
            yield make(t, kmap.get(k, k))
    finally:
        view.release()


def read_audit_log(
    path: PathLike,
    *,
    kinds: Optional[Iterable[Any]] = None,
    strict: bool = False,
    include_torn: bool = False,
) -> Iterator[Record]:
    """Iterate over the records of a log directory (segments in index order) or one segment.

    Records come in file (flush) order; `seq` is the total order. `kinds` keeps only those
    kinds (RecordKind, int or name). Damage raises `AuditLogCorrupt` (with `.path` and
    `.offset`) after the valid records before it were yielded. A torn tail (a record after
    `committed` that fails its CRC and is not all zero) is skipped and logged at debug level;
    with `strict=True` it raises instead, with `include_torn=True` it is yielded (its
    `crc_ok` is False: never take it for a valid record).
    """
    kset = _kind_set(kinds)
    segments = list_segments(path)  # FileNotFoundError now, not at the first next()
    return _read_segments(segments, kset, strict, include_torn)


def _read_segments(
    segments: list[tuple[Optional[int], str]],
    kset: Optional[frozenset],
    strict: bool,
    include_torn: bool,
) -> Iterator[Record]:
    for idx, seg in segments:
        scan = _scan_segment(seg, idx)
        yield from _records(scan.data, scan.n_valid, kset)
        if scan.corrupt is not None:
            off, why = scan.corrupt
            raise AuditLogCorrupt(why, path=seg, offset=off)
        if scan.torn_offset is not None:
            if strict:
                raise AuditLogCorrupt(
                    "torn record after the committed extent (the writer stopped mid-record)",
                    path=seg,
                    offset=scan.torn_offset,
                )
            log.debug("%s: torn tail at offset %d skipped", seg, scan.torn_offset)
            if include_torn:
                t = RECORD_STRUCT.unpack_from(scan.data, scan.n_valid * RECORD_SIZE)
                rec = make_record(t, kind_of(t[3]))
                if kset is None or t[3] in kset:
                    yield rec


def read_stats(path: PathLike) -> dict[str, int]:
    """The live counters in `<dir>/stats.bin` (or the given file), as a dict."""
    p = os.fspath(path)
    if os.path.isdir(p):
        p = os.path.join(p, "stats.bin")
    with open(p, "rb") as f:
        buf = f.read(STATS_SIZE)
    return unpack_stats(buf, path=p)


# --------------------------------------------------------------------------------------------
# Verify


@dataclass
class VerifyReport:
    """Outcome of `verify_audit_log`. `ok` is True only for a clean log: no corruption, no
    torn tail, no unaccounted loss, no duplicate, and an intact hash chain."""

    path: str
    ok: bool = False
    records: int = 0
    segments: int = 0
    first_seq: Optional[int] = None
    last_seq: Optional[int] = None
    #: seqs missing from the log and covered by GAP records (losses the log itself declares)
    gaps_accounted: int = 0
    #: number of GAP records
    gap_records: int = 0
    #: seq ranges (first, last) missing from [first_seq, last_seq] and not covered by a GAP
    unaccounted_missing: list[tuple[int, int]] = field(default_factory=list)
    #: seqs present more than once (first few)
    duplicates: list[int] = field(default_factory=list)
    #: (file, byte offset) of each torn tail
    torn_tails: list[tuple[str, int]] = field(default_factory=list)
    #: (file, byte offset, why) of each corruption (the first is the first bad place)
    corrupt: list[tuple[str, int, str]] = field(default_factory=list)
    #: sequence-accounting inconsistencies (GAP counts that do not add up, ...)
    accounting_errors: list[str] = field(default_factory=list)
    chain_ok: bool = True
    #: (file, byte offset, why); the first entry names the first bad file and offset
    chain_errors: list[tuple[str, int, str]] = field(default_factory=list)
    #: hex of the last segment's verified chain head
    chain_head: Optional[str] = None
    keyed: bool = False
    #: periods of CLOCK evidence: {"state", "from_wall_ns", "to_wall_ns", "records",
    #: "max_error_us"}; consecutive CLOCK records of one state form a period
    clock_evidence: list[dict[str, Any]] = field(default_factory=list)
    #: SESSION_START/SESSION_END pairs: {"pid", "first_seq", "start_wall_ns", "end_wall_ns",
    #: "records_written", "dropped_main", "dropped_emergency", "ended"}
    sessions: list[dict[str, Any]] = field(default_factory=list)
    #: informational remarks (open segments, live log, ...)
    notes: list[str] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)

    @property
    def first_error(self) -> Optional[tuple[str, int, str]]:
        """The first bad (file, offset, why): corruption first, then the chain."""
        if self.corrupt:
            return self.corrupt[0]
        if self.chain_errors:
            return self.chain_errors[0]
        if self.torn_tails:
            f, o = self.torn_tails[0]
            return (f, o, "torn tail")
        return None

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    def lines(self) -> list[str]:
        """A plain-text rendering, one finding per line."""
        out = [f"audit log {self.path}: {'OK' if self.ok else 'FAILED'}"]
        seqs = f"seq {self.first_seq}..{self.last_seq}" if self.first_seq is not None else "no seq"
        out.append(f"  {self.records} records in {self.segments} segment(s), {seqs}")
        if self.kinds:
            out.append("  kinds: " + ", ".join(f"{k}={v}" for k, v in sorted(self.kinds.items())))
        out.append(
            f"  losses declared by GAP records: {self.gaps_accounted} seq(s) "
            f"in {self.gap_records} GAP record(s)"
        )
        for lo, hi in self.unaccounted_missing[:20]:
            n = hi - lo + 1
            out.append(f"  UNACCOUNTED loss: seq {lo}..{hi} ({n} record(s), no GAP record)")
        if len(self.unaccounted_missing) > 20:
            out.append(f"  ... {len(self.unaccounted_missing) - 20} more unaccounted range(s)")
        for s in self.duplicates:
            out.append(f"  DUPLICATE seq {s}")
        for msg in self.accounting_errors:
            out.append(f"  ACCOUNTING: {msg}")
        for f, o, why in self.corrupt:
            out.append(f"  CORRUPT {f} at offset {o}: {why}")
        for f, o in self.torn_tails:
            out.append(f"  torn tail {f} at offset {o} (skipped by the reader)")
        chain = "intact" if self.chain_ok else "BROKEN"
        kind = "HMAC-SHA256" if self.keyed else "SHA-256"
        out.append(f"  hash chain ({kind}): {chain}; head {self.chain_head or '-'}")
        for f, o, why in self.chain_errors:
            out.append(f"  CHAIN {f} at offset {o}: {why}")
        if self.clock_evidence:
            for p in self.clock_evidence:
                out.append(
                    f"  clock {p['state']}: {p['records']} CLOCK record(s), "
                    f"max error {p['max_error_us']} us"
                )
        else:
            out.append("  clock: no CLOCK records (no synchronisation evidence in the log)")
        for s in self.sessions:
            end = "ended" if s["ended"] else "NOT ended (crash or still running)"
            out.append(
                f"  session pid {s['pid']} from seq {s['first_seq']}: {end}; "
                f"dropped main {s['dropped_main']}, emergency {s['dropped_emergency']}"
            )
        for n in self.notes:
            out.append(f"  note: {n}")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _resolve_key(key: Any) -> tuple[Optional[bytes], Optional[str]]:
    """(key bytes or None, error text or None) from the argument or the environment."""
    try:
        if key is not None:
            return parse_hmac_key(key), None
        return parse_hmac_key(os.environ.get("KILLSWITCH_AUDIT_HMAC_KEY")), None
    except (ValueError, TypeError) as e:
        return None, f"HMAC key unusable: {e}"


def _clock_state(code: int) -> str:
    try:
        return ClockSync(code).name.lower()
    except ValueError:
        return f"code {code}"


def verify_audit_log(path: PathLike, *, key: Any = None) -> VerifyReport:
    """Check a log: CRCs, committed extents, torn tails, sequence accounting and the chain.

    `key` (bytes or hex) is the HMAC key of a KEYED log; by default it comes from
    `KILLSWITCH_AUDIT_HMAC_KEY`. Never raises for damage: everything goes into the report.
    Raises FileNotFoundError when `path` does not exist.
    """
    p = os.fspath(path)
    report = VerifyReport(path=p)
    segs = list_segments(p)
    single_file = not os.path.isdir(p)
    key_bytes, key_error = _resolve_key(key)
    report.segments = len(segs)
    if not segs:
        report.notes.append("no segment files")

    seqs = array("Q")
    gaps: list[tuple[int, int, int]] = []  # (first, count, last)
    kinds_count: dict[int, int] = {}
    clock: list[tuple[int, int, int]] = []  # (wall_ns, code, max error)
    sessions: list[dict[str, Any]] = []
    prev_final: Optional[bytes] = None
    prev_index: Optional[int] = None
    prev_path: Optional[str] = None
    last_head: Optional[str] = None

    to_locate: list[tuple[int, bytes, int]] = []

    def chain_error(f: str, off: int, why: str) -> None:
        report.chain_ok = False
        report.chain_errors.append((f, off, why))

    for pos, (idx, seg) in enumerate(segs):
        scan = _scan_segment(seg, idx)
        is_last = pos == len(segs) - 1
        if scan.corrupt is not None:
            report.corrupt.append((seg, scan.corrupt[0], scan.corrupt[1]))
        if scan.torn_offset is not None:
            report.torn_tails.append((seg, scan.torn_offset))
        n = scan.n_valid
        report.records += n

        # records: seqs, GAPs, clock, sessions
        view = memoryview(scan.data)[: n * RECORD_SIZE]
        for t in RECORD_STRUCT.iter_unpack(view):
            seqs.append(t[0])
            k = t[3]
            kinds_count[k] = kinds_count.get(k, 0) + 1
            if k >= _K_GAP:
                if k == _K_GAP:
                    gaps.append((t[7], t[8], t[9]))
                elif k == _K_CLOCK:
                    clock.append((t[1], t[5], t[8]))
                elif k == _K_SESSION_START:
                    sessions.append(
                        {
                            "pid": t[7],
                            "first_seq": t[8],
                            "start_wall_ns": t[1],
                            "end_wall_ns": None,
                            "records_written": None,
                            "dropped_main": None,
                            "dropped_emergency": None,
                            "ended": False,
                        }
                    )
                elif k == _K_SESSION_END:
                    if sessions and not sessions[-1]["ended"]:
                        s = sessions[-1]
                    else:
                        s = {"pid": None, "first_seq": None, "start_wall_ns": None}
                        sessions.append(s)
                    s.update(
                        end_wall_ns=t[1],
                        records_written=t[7],
                        dropped_main=t[8],
                        dropped_emergency=t[9],
                        ended=True,
                    )
        view.release()

        # hash chain
        h = scan.header
        if h is None:
            chain_error(seg, 0, "no readable header: the chain cannot be checked")
            prev_final, prev_index, prev_path = None, idx, seg
            continue
        if h.keyed:
            report.keyed = True
        if not single_file:
            if pos == 0 and h.segment_index != 0:
                chain_error(
                    seg,
                    HDR_OFF_PREV_CHAIN,
                    f"segments 0..{h.segment_index - 1} are missing (deleted?): the chain "
                    "cannot be anchored",
                )
            elif prev_index is not None and h.segment_index != prev_index + 1:
                chain_error(
                    seg,
                    HDR_OFF_PREV_CHAIN,
                    f"segment(s) {prev_index + 1}..{h.segment_index - 1} missing before this one",
                )
            elif pos == 0 and h.prev_chain != EMPTY_CHAIN:
                chain_error(seg, HDR_OFF_PREV_CHAIN, "first segment's prev_chain is not all zero")
            elif prev_final is not None and h.prev_chain != prev_final:
                chain_error(
                    seg,
                    HDR_OFF_PREV_CHAIN,
                    "prev_chain does not match the final chain of "
                    f"{os.path.basename(prev_path or '')} (a segment was replaced, edited or "
                    "removed)",
                )
        prev_final, prev_index, prev_path = None, h.segment_index, seg
        if h.keyed and key_bytes is None:
            chain_error(
                seg,
                HDR_OFF_FLAGS,
                key_error
                or "segment is KEYED (HMAC-SHA256) but no key was given: set "
                "KILLSWITCH_AUDIT_HMAC_KEY (hex) or pass key=",
            )
            continue
        seg_key = key_bytes if h.keyed else None
        if is_last and not h.closed and not _chain_head_matches(scan, seg_key):
            # a running writer may be between storing chain_head and chain_records: look again
            for _ in range(3):
                time.sleep(0.002)
                again = _scan_segment(seg, idx)
                if again.header is not None and _chain_head_matches(again, seg_key):
                    scan, h, n = again, again.header, again.n_valid
                    break
        hasher = ChainHasher(h.prev_chain, h.segment_index, seg_key)
        cr = h.chain_records
        data = memoryview(scan.data)
        try:
            if cr > n:
                chain_error(
                    seg,
                    HEADER_SIZE + n * RECORD_SIZE,
                    f"chain covers {cr} records but only {n} valid records are present "
                    "(records removed or the segment truncated)",
                )
            else:
                hasher.update(data[: cr * RECORD_SIZE])
                head = hasher.digest()
                if cr == 0 and h.chain_head == EMPTY_CHAIN and not h.closed:
                    report.notes.append(
                        f"{os.path.basename(seg)}: chain not started yet (no record hashed)"
                    )
                elif head != h.chain_head:
                    chain_error(
                        seg,
                        HDR_OFF_CHAIN_HEAD,
                        f"chain head over the first {cr} records does not match: records "
                        "were edited, inserted, deleted or reordered"
                        + (" (or the HMAC key is wrong)" if h.keyed else ""),
                    )
                    # keep the records to point at the first suspicious one afterwards
                    to_locate.append((len(report.chain_errors) - 1, scan.data, min(cr, n)))
                else:
                    last_head = head.hex()
                hasher.update(data[cr * RECORD_SIZE : n * RECORD_SIZE])
                prev_final = hasher.digest()
        finally:
            data.release()
        if h.closed:
            if cr != h.committed:
                chain_error(
                    seg,
                    HDR_OFF_CHAIN_RECORDS,
                    f"closed segment: chain covers {cr} records but committed={h.committed}",
                )
            if n > h.committed:
                chain_error(
                    seg,
                    HEADER_SIZE + h.committed * RECORD_SIZE,
                    "valid record after the committed extent of a closed segment "
                    "(appended after closing)",
                )
        elif is_last:
            report.notes.append(
                f"{os.path.basename(seg)} is not closed (logger running, or crashed): chain "
                f"verified over its first {cr} of {n} records"
            )
        else:
            report.notes.append(
                f"{os.path.basename(seg)} was never closed (writer crashed); the next segment "
                "must chain from all its valid records"
            )
        if is_last:
            report.chain_head = last_head if last_head is not None else None

    # sequence accounting
    report.gap_records = len(gaps)
    kinds_named: dict[str, int] = {}
    for k, v in kinds_count.items():
        kk = kind_of(k)
        kinds_named[kk.name if isinstance(kk, RecordKind) else str(k)] = v
    report.kinds = kinds_named
    _account(report, seqs, gaps)
    for err_index, data, count in to_locate:
        found = _locate_tamper(data, count, report)
        if found is not None:
            f, _off, why = report.chain_errors[err_index]
            idx, what = found
            report.chain_errors[err_index] = (
                f,
                HEADER_SIZE + idx * RECORD_SIZE,
                f"{why}; first suspicious record: {what}",
            )
    del seqs
    report.clock_evidence = _clock_periods(clock)
    report.sessions = sessions
    if report.sessions and not report.sessions[-1]["ended"]:
        report.notes.append("the last session has no SESSION_END (running or crashed)")
    if any(s["ended"] is False for s in report.sessions[:-1]):
        report.notes.append("an earlier session has no SESSION_END (it crashed)")
    report.ok = (
        not report.corrupt
        and not report.torn_tails
        and not report.unaccounted_missing
        and not report.duplicates
        and not report.accounting_errors
        and report.chain_ok
    )
    return report


def _holes_and_duplicates(seqs: array) -> tuple[int, int, list[tuple[int, int]], list[int]]:
    """(min, max, missing ranges, first duplicate seqs) of a non-empty array of seqs."""
    try:
        import numpy as np
    except ImportError:
        np = None
    if np is not None:  # sorts in place in 8 bytes a seq, not 36 for a list of ints
        arr = np.frombuffer(seqs, dtype=np.uint64).copy()
        arr.sort()
        d = np.diff(arr)
        dup_vals = np.unique(arr[1:][d == 0])[:20]
        idx = np.flatnonzero(d > 1)
        lo = (arr[idx] + 1).tolist()
        hi = (arr[idx + 1] - 1).tolist()
        return int(arr[0]), int(arr[-1]), list(zip(lo, hi)), [int(v) for v in dup_vals]
    srt = sorted(seqs)
    missing: list[tuple[int, int]] = []
    dups: list[int] = []
    prev = srt[0]
    for s in _islice1(srt):
        d = s - prev
        if d == 1:
            prev = s
            continue
        if d == 0:
            if len(dups) < 20 and (not dups or dups[-1] != s):
                dups.append(s)
            continue
        missing.append((prev + 1, s - 1))
        prev = s
    return srt[0], srt[-1], missing, dups


def _account(report: VerifyReport, seqs: array, gaps: list[tuple[int, int, int]]) -> None:
    if not seqs:
        return
    first, last, missing, dups = _holes_and_duplicates(seqs)
    report.first_seq = first
    report.last_seq = last
    report.duplicates = dups
    # GAP ranges, merged
    ranges = sorted((a, c) for a, _b, c in gaps if c >= a)
    merged: list[list[int]] = []
    for a, c in ranges:
        if merged and a <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], c)
        else:
            merged.append([a, c])
    for a, b, c in gaps:
        if c < a or b <= 0 or b > c - a + 1:
            report.accounting_errors.append(f"malformed GAP record: first {a}, count {b}, last {c}")
    # subtract GAP coverage from each hole
    covered = 0
    unaccounted: list[tuple[int, int]] = []
    j = 0
    for lo, hi in missing:
        cur = lo
        while j < len(merged) and merged[j][1] < cur:
            j += 1
        k = j
        while cur <= hi:
            if k < len(merged) and merged[k][0] <= cur:
                end = min(hi, merged[k][1])
                covered += end - cur + 1
                cur = end + 1
                if merged[k][1] <= hi:
                    k += 1
            else:
                nxt = merged[k][0] if k < len(merged) else hi + 1
                end = min(hi, nxt - 1)
                unaccounted.append((cur, end))
                cur = end + 1
    report.unaccounted_missing = unaccounted
    report.gaps_accounted = covered
    declared = sum(b for _a, b, _c in gaps)
    if declared != covered:
        report.accounting_errors.append(
            f"GAP records declare {declared} lost seq(s) but {covered} seq(s) inside their "
            "ranges are missing"
        )


def _locate_tamper(data: bytes, count: int, report: VerifyReport) -> Optional[tuple[int, str]]:
    """Best guess of the first tampered record of a segment whose chain failed.

    The chain says *that* a segment changed, not where. Sequence numbers give a hint: a
    seq present twice (an inserted copy), main-ring records out of seq order (reordering;
    main-ring records are written in seq order, emergency and system records are not), or
    the place of an unaccounted hole (a deletion). None when nothing stands out (an edit
    that kept the seq): the caller then names the header's chain_head field.
    """
    dup_set = set(report.duplicates)
    holes = report.unaccounted_missing[:100]
    candidates: list[tuple[int, str]] = []
    seen: set[int] = set()
    last_main = -1
    view = memoryview(data)[: count * RECORD_SIZE]
    try:
        for i, t in enumerate(RECORD_STRUCT.iter_unpack(view)):
            seq, flags = t[0], t[4]
            if seq in dup_set and seq in seen:
                candidates.append((i, f"seq {seq} appears twice (inserted copy?)"))
                break
            seen.add(seq)
            if not flags & 0x3:  # a main-ring record (neither SYSTEM nor EMERGENCY)
                if seq <= last_main:
                    candidates.append(
                        (max(i - 1, 0), f"main-ring records out of seq order ({last_main}, {seq})")
                    )
                    break
                if last_main >= 0:
                    hole = next((h for h in holes if last_main < h[0] and seq > h[1]), None)
                    if hole is not None:
                        lo, hi = hole
                        candidates.append((i, f"seqs {lo}..{hi} missing before it (deleted?)"))
                        break
                last_main = seq
    finally:
        view.release()
    return min(candidates) if candidates else None


def _chain_head_matches(scan: _Scan, key: Optional[bytes]) -> bool:
    """True when the header's chain_head is the chain over its first chain_records records."""
    h = scan.header
    if h is None or h.chain_records > scan.n_valid:
        return False
    hasher = ChainHasher(h.prev_chain, h.segment_index, key)
    with memoryview(scan.data) as data:
        hasher.update(data[: h.chain_records * RECORD_SIZE])
    return hasher.digest() == h.chain_head


def _islice1(seq: list[int]) -> Iterator[int]:
    it = iter(seq)
    next(it, None)
    return it


def _clock_periods(clock: list[tuple[int, int, int]]) -> list[dict[str, Any]]:
    periods: list[dict[str, Any]] = []
    for wall, code, maxerr in sorted(clock):
        state = _clock_state(code)
        if periods and periods[-1]["state"] == state:
            p = periods[-1]
            p["to_wall_ns"] = wall
            p["records"] += 1
            p["max_error_us"] = max(p["max_error_us"], maxerr)
        else:
            periods.append(
                {
                    "state": state,
                    "from_wall_ns": wall,
                    "to_wall_ns": wall,
                    "records": 1,
                    "max_error_us": maxerr,
                }
            )
    return periods


def export_chain_head(path: PathLike) -> dict[str, Any]:
    """The chain head of the last segment, to anchor elsewhere (a daily report, a notary).

    Returns {"segment", "file", "records", "head", "keyed", "closed", "total_records"}: the
    header's `chain_head` over `records` records (not recomputed; run `verify_audit_log`
    against the exported value to check it). Raises FileNotFoundError for an empty log and
    AuditLogCorrupt when the last header is unreadable.
    """
    segs = list_segments(path)
    if not segs:
        raise FileNotFoundError(f"no segment files in {os.fspath(path)}")
    idx, seg = segs[-1]
    scan = _scan_segment(seg, idx)
    if scan.header is None:
        off, why = scan.corrupt or (0, "unreadable header")
        raise AuditLogCorrupt(why, path=seg, offset=off)
    h = scan.header
    return {
        "segment": h.segment_index,
        "file": seg,
        "records": h.chain_records,
        "head": h.chain_head.hex(),
        "keyed": h.keyed,
        "closed": h.closed,
        "total_records": scan.n_valid,
    }
