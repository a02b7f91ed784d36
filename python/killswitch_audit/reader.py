"""Read and verify an audit log (a directory of segments, or one segment file).

The reading rules, `verify` and the `dump` rendering live in the Rust core
(`rust/core/src/reader/`, docs/FORMAT.md); this module converts their results to Python:
`Record`s, a numpy structured array, a `VerifyReport`. tests/reference_decoder.py is an
independent stdlib-only decoder of the same format, checked against this one on golden files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Union

from .errors import AuditLogCorrupt
from .format import (
    NUMPY_DTYPE_DESCR,
    STATS_SIZE,
    ClockSync,
    Record,
    RecordKind,
    SegmentHeader,
    kind_of,
    parse_hmac_key,
    parse_segment_name,
    unpack_stats,
)

__all__ = [
    "VerifyReport",
    "export_chain_head",
    "list_segments",
    "read_audit_array",
    "read_audit_log",
    "read_stats",
    "verify_audit_log",
]

log = logging.getLogger("killswitch_audit.reader")

PathLike = Union[str, "os.PathLike[str]"]


def _native() -> Any:
    try:
        from . import _native  # type: ignore[attr-defined]
    except ImportError as e:
        raise ImportError(
            "reading an audit log needs the compiled extension killswitch_audit._native, "
            f"which is not installed ({e}); build the package with maturin"
        ) from e
    return _native


def list_segments(path: PathLike) -> list[tuple[Optional[int], str]]:
    """(index, file path) of the segments of a log directory in index order, or of one file.

    In a directory, only `NNNNNNNNNNNN.seg` files count (`*.seg.next` and others are ignored).
    Raises FileNotFoundError when `path` does not exist.
    """
    p = os.fspath(path)
    if os.path.isdir(p):
        found = [(parse_segment_name(n), os.path.join(p, n)) for n in os.listdir(p)]
        return sorted((i, f) for i, f in found if i is not None)  # type: ignore[misc]
    if not os.path.exists(p):
        raise FileNotFoundError(f"no such audit log: {p}")
    return [(parse_segment_name(os.path.basename(p)), p)]


def _kind_list(kinds: Optional[Iterable[Any]]) -> Optional[list[int]]:
    if kinds is None:
        return None
    if isinstance(kinds, (int, str)):
        kinds = [kinds]
    out = []
    for k in kinds:
        if isinstance(k, str):
            try:
                k = RecordKind[k.strip().upper()]
            except KeyError:
                raise ValueError(f"unknown record kind {k!r}") from None
        k = int(k)
        if not 0 <= k <= 255:
            raise ValueError(f"record kind {k} out of range 0..255")
        out.append(k)
    return out


def read_audit_log(
    path: PathLike,
    *,
    kinds: Optional[Iterable[Any]] = None,
    salvage: bool = False,
    strict: bool = False,
) -> Iterator[Record]:
    """Iterate over the records of a log directory (segments in index order) or one segment.

    Records come in file (flush) order; `seq` is the total order. `kinds` keeps only those
    kinds (RecordKind, int or name). Damage raises `AuditLogCorrupt` (with `.path` and
    `.offset`) after the valid records before it were yielded; with `salvage=True` the intact
    records after the damage are yielded too, each with `salvaged=True`, and the damage is
    logged instead of raised. A torn tail (a record after `committed` of an open segment that
    fails its CRC) is skipped; `strict=True` raises for it instead.
    """
    kind_list = _kind_list(kinds)
    p = os.fspath(path)
    records, damage, torn = _native().read_records(p, kind_list, salvage)
    if damage is None and torn is None:
        return iter(records)  # the common case: no generator frame per record
    return _yield(records, damage, torn, salvage, strict)


def _yield(records: list, damage: Any, torn: Any, salvage: bool, strict: bool) -> Iterator[Record]:
    yield from records
    if damage is not None:
        if not salvage:
            raise damage
        log.warning("read past damage (salvage): %s", damage)
    if torn is not None:
        seg, off = torn
        if strict:
            raise AuditLogCorrupt(
                "torn record after the committed extent (the writer stopped mid-record)",
                path=seg,
                offset=off,
            )
        log.debug("%s: torn tail at offset %d skipped", seg, off)


def read_audit_array(
    path: PathLike, *, kinds: Optional[Iterable[Any]] = None, salvage: bool = False
) -> Any:
    """The records of a log as a numpy structured array (dtype `NUMPY_DTYPE_DESCR`, file
    order), the bulk path. Same rules as `read_audit_log`; damage raises `AuditLogCorrupt`
    (no records returned) unless `salvage=True`. Needs numpy (imported here, lazily)."""
    import numpy as np

    native = _native()
    segments, slots = native.log_slots(os.fspath(path))
    # sized by the files (untouched pages of np.empty cost nothing); filled in place
    arr = np.empty(slots, dtype=np.dtype(NUMPY_DTYPE_DESCR))
    count, _salvaged, damage, _torn = native.read_log_into(
        segments, arr.view(np.uint8), _kind_list(kinds), salvage
    )
    if damage is not None and not salvage:
        raise damage
    return arr[:count]


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
    torn tail, no unaccounted or possible loss, no duplicate, and an intact hash chain."""

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
    #: or by a crashed session's possible-loss range
    unaccounted_missing: list[tuple[int, int]] = field(default_factory=list)
    #: (pid, first, end exclusive): seqs a crashed session may have handed out and lost (from
    #: its last record up to its `seq_reserved` mark; docs/FORMAT.md "Sequence accounting")
    possible_loss: list[tuple[Optional[int], int, int]] = field(default_factory=list)
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
    #: SESSION_START/SESSION_END spans: {"pid", "first_seq", "start_wall_ns", "end_wall_ns",
    #: "records_written", "dropped_main", "dropped_emergency", "ended", "last_seq",
    #: "seq_reserved"}
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
        for pid, lo, hi in self.possible_loss:
            out.append(
                f"  POSSIBLE LOSS in a crash: seqs [{lo}, {hi}) may have been handed out and "
                f"lost (session of pid {pid} ended without SESSION_END below its mark)"
            )
        for lo, hi in self.unaccounted_missing[:20]:
            out.append(
                f"  UNACCOUNTED loss: seq {lo}..{hi} ({hi - lo + 1} record(s), no GAP record)"
            )
        if len(self.unaccounted_missing) > 20:
            out.append(f"  ... {len(self.unaccounted_missing) - 20} more unaccounted range(s)")
        out.extend(f"  DUPLICATE seq {s}" for s in self.duplicates)
        out.extend(f"  ACCOUNTING: {msg}" for msg in self.accounting_errors)
        out.extend(f"  CORRUPT {f} at offset {o}: {why}" for f, o, why in self.corrupt)
        out.extend(
            f"  torn tail {f} at offset {o} (skipped by the reader)" for f, o in self.torn_tails
        )
        chain = "intact" if self.chain_ok else "BROKEN"
        kind = "HMAC-SHA256" if self.keyed else "SHA-256"
        out.append(f"  hash chain ({kind}): {chain}; head {self.chain_head or '-'}")
        out.extend(f"  CHAIN {f} at offset {o}: {why}" for f, o, why in self.chain_errors)
        for p in self.clock_evidence:
            out.append(
                f"  clock {p['state']}: {p['records']} CLOCK record(s), "
                f"max error {p['max_error_us']} us"
            )
        if not self.clock_evidence:
            out.append("  clock: no CLOCK records (no synchronisation evidence in the log)")
        for s in self.sessions:
            end = "ended" if s["ended"] else "NOT ended (crash or still running)"
            out.append(
                f"  session pid {s['pid']} from seq {s['first_seq']}: {end}; "
                f"dropped main {s['dropped_main']}, emergency {s['dropped_emergency']}"
            )
        out.extend(f"  note: {n}" for n in self.notes)
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _clock_state(code: int) -> str:
    try:
        return ClockSync(code).name.lower()
    except ValueError:
        return f"code {code}"


def verify_audit_log(path: PathLike, *, key: Any = None) -> VerifyReport:
    """Check a log: CRCs, committed extents, bytes after them and past capacity, torn tails,
    sequence accounting and the chain (HMAC with `key`: then every segment must be KEYED).

    `key` (bytes or hex) defaults to `KILLSWITCH_AUDIT_HMAC_KEY`. Never raises for damage:
    everything goes into the report; a place with no segment is a failed report ("no audit
    log here"). Raises FileNotFoundError when `path` does not exist.
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"no such audit log: {p}")
    notes: list[str] = []
    try:
        key_bytes = parse_hmac_key(key if key is not None else os.environ.get(HMAC_KEY_ENV))
    except (ValueError, TypeError) as e:
        key_bytes = None
        notes.append(f"HMAC key unusable: {e}")
    d = _native().verify_audit_log(p, key_bytes)
    d["clock_evidence"] = [
        {
            "state": _clock_state(c["code"]),
            "from_wall_ns": c["from_wall_ns"],
            "to_wall_ns": c["to_wall_ns"],
            "records": c["records"],
            "max_error_us": c["max_error_us"],
        }
        for c in d.pop("clock")
    ]
    d["kinds"] = {getattr(kind_of(k), "name", str(k)): n for k, n in d["kinds"]}
    d["notes"] = notes + d["notes"]
    if notes:
        d["ok"] = False
    return VerifyReport(**d)


HMAC_KEY_ENV = "KILLSWITCH_AUDIT_HMAC_KEY"


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
    scan = _scan_segment(segs[-1][1])
    h = scan.header
    return {
        "segment": h.segment_index,
        "file": segs[-1][1],
        "records": h.chain_records,
        "head": h.chain_head.hex(),
        "keyed": h.keyed,
        "closed": h.closed,
        "total_records": scan.n_valid,
    }


# --------------------------------------------------------------------------------------------
# One segment, for the code that still looks at segments itself (restore)


@dataclass
class _Scan:
    """One segment file after the native reader applied the reading rules."""

    path: str
    header: Optional[SegmentHeader]
    #: bytes of the records `[0, n_valid)`, then of salvaged ones (salvage mode)
    data: bytes = b""
    n_valid: int = 0
    torn_offset: Optional[int] = None
    #: (byte offset, why) of the first damage
    corrupt: Optional[tuple[int, str]] = None


_HEADER_KEYS = (
    "segment_index first_seq created_wall_ns pid flags capacity committed chain_records "
    "chain_head prev_chain host writer_chained seq_reserved"
).split()


def _scan_segment(path: str, _index: Optional[int] = None, salvage: bool = False) -> _Scan:
    """Reads one segment; never raises for damage (an unreadable header gives `header=None`)."""
    try:
        d = _native().scan_segment_file(os.fspath(path), salvage)
    except AuditLogCorrupt as e:
        return _Scan(path=path, header=None, corrupt=(e.offset, str(e)))
    except OSError as e:
        return _Scan(path=path, header=None, corrupt=(0, f"cannot read: {e}"))
    header = SegmentHeader(**{k: d[k] for k in _HEADER_KEYS})
    return _Scan(path, header, d["data"], d["n_valid"], d["torn_at"], d["damage"])
