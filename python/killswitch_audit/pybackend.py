"""`PyAuditLogger`: the pure-Python audit backend.

Two jobs: the fallback when the native extension cannot load (or `backend: python` is
configured), and the benchmark peer "a pure-Python ring: `struct.pack_into` into an mmap"
that the native engine replaced. It has the native `AuditLogger`'s public API and writes
exactly the same files (docs/FORMAT.md), so the reader, `dump` and `verify` work on both.

Design, in short:

- Two bounded rings (preallocated `bytearray`s of 64-byte slots): main and emergency. A
  producer takes one `threading.Lock` (also correct on free-threaded Python), claims the next
  sequence number (one counter for both rings and for the flusher's own records), packs the
  record with `struct.pack_into` and publishes it by advancing the ring's head. A full ring
  never waits (policy "drop"; "spin" retries for at most `spin_limit_us`): the record is
  dropped, its seq is counted as lost, and the flusher writes a GAP record naming the range.
- A daemon flusher thread (fine for a fallback; it holds the GIL only while it works) drains
  the emergency ring first, then the main ring, every `flush_interval_ms` and at once after a
  kill-switch record; it stamps CRC-32C, feeds the hash chain, copies the records into the
  mmap of the current segment, then stores `committed`. It rolls segments at
  `segment_size_mb`, preparing the next one (`.seg.next`, `os.posix_fallocate`) ahead.
- With `durable_kill_switch` the flusher `fdatasync`s after emergency-ring records, and
  `wait_durable(seq)` waits for that.
- A new logger on an existing directory continues `seq` after the highest seq in the log and
  chains from the last segment's final chain (all its valid records, if it was never closed
  because its writer crashed). Old segments are never rewritten.
- `fork()`: the child's copy of every logger is marked closed; any call raises
  `AuditLoggerClosed` saying so (the child shares no flusher and must create its own logger).
- Interpreter exit closes (drains) every live logger (atexit, weak references).

Test hook: `pause_flusher()` / `resume_flusher()` (or the `flusher_paused()` context manager)
hold the flusher between passes, so tests can fill a ring and see drops and GAP records.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import mmap
import os
import socket
import struct
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any, Optional, Union

from .errors import AuditLoggerClosed, KillSwitchAuditError
from .format import (
    EMPTY_CHAIN,
    HDR_OFF_CHAIN_HEAD,
    HDR_OFF_CHAIN_RECORDS,
    HDR_OFF_COMMITTED,
    HDR_OFF_FLAGS,
    HEADER_SIZE,
    I64_MAX,
    I64_MIN,
    REC_FLAG_EMERGENCY,
    REC_FLAG_SYSTEM,
    RECORD_BODY_STRUCT,
    RECORD_SIZE,
    SEG_FLAG_CLOSED,
    SEG_FLAG_KEYED,
    STATS_FIELDS,
    STATS_MAGIC,
    STATS_SIZE,
    STATS_STRUCT,
    U8_MAX,
    U16_MAX,
    U32_MAX,
    U64_MAX,
    VERSION,
    ChainHasher,
    ClockSync,
    RecordKind,
    Ring,
    SegmentHeader,
    pack_header,
    parse_hmac_key,
    segment_name,
    stamp_crcs,
)

__all__ = ["PyAuditLogger"]

log = logging.getLogger("killswitch_audit.pybackend")

_MiB = 1 << 20
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_pack_body = RECORD_BODY_STRUCT.pack_into
_time_ns = time.time_ns
_mono_ns = time.monotonic_ns
_get_tid = threading.get_native_id

_K_KILL_SWITCH = int(RecordKind.KILL_SWITCH)
_K_TRADE = int(RecordKind.TRADE)

# every live logger, for interpreter exit and fork
_LIVE: weakref.WeakSet[PyAuditLogger] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for lg in list(_LIVE):
        try:
            lg.close()
        except Exception:  # never let one logger stop the others from draining
            log.exception("closing an audit logger at interpreter exit failed")


def _after_fork_in_child() -> None:
    for lg in list(_LIVE):
        lg._mark_forked()


atexit.register(_close_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# --------------------------------------------------------------------------------------------
# argument checking (TypeError for a wrong type, OverflowError out of range)


def _int(name: str, v: Any) -> int:
    if type(v) is int:
        return v
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, not {type(v).__name__}")
    return int(v)


def _check_u(name: str, v: Any, hi: int) -> int:
    v = _int(name, v)
    if v < 0 or v > hi:
        raise OverflowError(f"{name}={v} out of range 0..{hi}")
    return v


def _check_i64(name: str, v: Any) -> int:
    v = _int(name, v)
    if v < I64_MIN or v > I64_MAX:
        raise OverflowError(f"{name}={v} out of the i64 range")
    return v


def _ranged(name: str, v: Any, lo: int, hi: int) -> int:
    v = _int(name, v)
    if not lo <= v <= hi:
        raise ValueError(f"{name}={v} must be in {lo}..{hi}")
    return v


def _number(name: str, v: Any, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(v).__name__}")
    if not 0 < v <= hi:  # also refuses NaN
        raise ValueError(f"{name}={v} must be in (0, {hi}]")
    return v


def _pow2(name: str, v: Any, lo: int, hi: int) -> int:
    v = _int(name, v)
    if v < lo or v > hi or v & (v - 1):
        raise ValueError(f"{name}={v} must be a power of two in {lo}..{hi}")
    return v


# --------------------------------------------------------------------------------------------
# ring


class _Ring:
    """A bounded ring of 64-byte slots. `head` (next slot to fill) and `tail` (next slot to
    drain) only grow; `head - tail` is in `0 ..= capacity`. Producers move `head` under the
    logger's lock after writing the slot; the single consumer (the flusher) reads slots
    `[tail, head)` and then moves `tail`. Dropped records are accumulated as
    (first seq, last seq, count) until the flusher turns them into a GAP record."""

    __slots__ = (
        "buf",
        "capacity",
        "drop_count",
        "drop_first",
        "drop_last",
        "dropped_total",
        "head",
        "mask",
        "tail",
        "view",
    )

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.mask = capacity - 1
        self.buf = bytearray(capacity * RECORD_SIZE)  # zero-filled: pages touched now
        self.view = memoryview(self.buf)
        self.head = 0
        self.tail = 0
        self.drop_first = -1
        self.drop_last = -1
        self.drop_count = 0
        self.dropped_total = 0

    def __len__(self) -> int:
        return self.head - self.tail

    def copy_out(self, tail: int, head: int) -> bytearray:
        """Records `[tail, head)` as one contiguous bytearray (handles wrap-around)."""
        n = head - tail
        if n <= 0:
            return bytearray()
        start = (tail & self.mask) * RECORD_SIZE
        end = start + n * RECORD_SIZE
        cap_bytes = self.capacity * RECORD_SIZE
        if end <= cap_bytes:
            return bytearray(self.view[start:end])
        out = bytearray(self.view[start:cap_bytes])
        out += self.view[: end - cap_bytes]
        return out


# --------------------------------------------------------------------------------------------
# segment


class _Segment:
    """An open segment file mapped for writing."""

    __slots__ = (
        "capacity",
        "committed",
        "fd",
        "hasher",
        "index",
        "mm",
        "path",
        "prev_chain",
    )

    def __init__(self, path: str, fd: int, mm: mmap.mmap, index: int, capacity: int, hasher):
        self.path = path
        self.fd = fd
        self.mm = mm
        self.index = index
        self.capacity = capacity
        self.committed = 0
        self.hasher = hasher

    @property
    def free(self) -> int:
        return self.capacity - self.committed


def _read_last_state(
    directory: str, key: Optional[bytes], notes: list[str]
) -> tuple[int, int, bytes, bool]:
    """(next segment index, next seq, prev_chain for it, keyed) from an existing log; what
    it finds worth saying goes into `notes`.

    Only the last segment is read: every record of an earlier segment was flushed, so its seq
    was claimed, before the last segment became active, hence is below that segment's
    `first_seq`. The next seq is therefore max(first_seq, highest seq in the last one + 1).
    """
    from .reader import _scan_segment, list_segments

    segs = list_segments(directory)
    if not segs:
        return 0, 0, EMPTY_CHAIN, False
    idx, path = segs[-1]
    scan = _scan_segment(path, idx)
    h = scan.header
    if h is None:
        raise KillSwitchAuditError(
            f"{path}: the last segment's header is unreadable "
            f"({scan.corrupt[1] if scan.corrupt else 'unknown'}); refusing to continue "
            "the chain from it: move the directory aside"
        )
    if h.keyed and not key:
        raise KillSwitchAuditError(
            f"{path}: the log is KEYED (HMAC-SHA256); give the same hmac_key to continue it"
        )
    n = scan.n_valid
    if scan.corrupt is not None:
        notes.append(
            f"{path}: damaged at offset {scan.corrupt[0]} ({scan.corrupt[1]}); "
            f"chaining from its {n} valid records"
        )
    if scan.torn_offset is not None:
        notes.append(f"{path}: torn record at offset {scan.torn_offset} left in place")
    if not h.closed:
        notes.append(
            f"{path} was not closed (its writer crashed?); continuing after its {n} valid records"
        )
    records = memoryview(scan.data)[: n * RECORD_SIZE]
    next_seq = h.first_seq
    for (seq,) in struct.iter_unpack("<Q56x", records):
        if seq >= next_seq:
            next_seq = seq + 1
    hasher = ChainHasher(h.prev_chain, h.segment_index, key if h.keyed else None)
    hasher.update(records)
    records.release()
    return h.segment_index + 1, next_seq, hasher.digest(), h.keyed


def _adjtimex() -> Optional[tuple[int, int, int, int]]:
    """(state, est error us, max error us, status) from adjtimex(2), or None."""
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

        class Timex(ctypes.Structure):
            _fields_ = [
                ("modes", ctypes.c_uint),
                ("offset", ctypes.c_long),
                ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long),
                ("esterror", ctypes.c_long),
                ("status", ctypes.c_int),
                ("constant", ctypes.c_long),
                ("precision", ctypes.c_long),
                ("tolerance", ctypes.c_long),
                ("time_sec", ctypes.c_long),
                ("time_usec", ctypes.c_long),
                ("tick", ctypes.c_long),
                ("ppsfreq", ctypes.c_long),
                ("jitter", ctypes.c_long),
                ("shift", ctypes.c_int),
                ("stabil", ctypes.c_long),
                ("jitcnt", ctypes.c_long),
                ("calcnt", ctypes.c_long),
                ("errcnt", ctypes.c_long),
                ("stbcnt", ctypes.c_long),
                ("tai", ctypes.c_int),
                ("_pad", ctypes.c_int * 11),
            ]

        tx = Timex()
        rc = libc.adjtimex(ctypes.byref(tx))
        if rc < 0:
            return None
        time_error = 5  # TIME_ERROR: clock not synchronised
        unsync = rc == time_error or bool(tx.status & 0x40)  # STA_UNSYNC
        state = ClockSync.UNSYNCHRONISED if unsync else ClockSync.SYNCHRONISED
        return int(state), int(tx.esterror), int(tx.maxerror), int(tx.status) & U32_MAX
    except Exception:
        return None


# --------------------------------------------------------------------------------------------
# the logger


class PyAuditLogger:
    """Pure-Python audit logger; same API and file format as the native `AuditLogger`."""

    backend = "python"

    def __init__(
        self,
        directory: Union[str, os.PathLike],
        *,
        buffer_size: int = 131072,
        emergency_buffer_size: int = 16384,
        flush_interval_ms: float = 2,
        segment_size_mb: int = 64,
        overflow_policy: str = "drop",
        hmac_key: Union[bytes, str, None] = None,
        durable_kill_switch: bool = True,
        spin_limit_us: int = 10,
        emergency_poll_us: int = 50,
        clock_check_interval_s: float = 1.0,
    ):
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"directory must be a str or path, not {type(directory).__name__}")
        buffer_size = _pow2("buffer_size", buffer_size, 2, 1 << 26)
        emergency_buffer_size = _pow2("emergency_buffer_size", emergency_buffer_size, 2, 1 << 24)
        flush_interval_ms = _number("flush_interval_ms", flush_interval_ms, 10_000)
        segment_size_mb = _ranged("segment_size_mb", segment_size_mb, 1, 4096)
        if not isinstance(overflow_policy, str):
            raise TypeError("overflow_policy must be a str")
        if overflow_policy not in ("drop", "spin"):
            raise ValueError(f"overflow_policy={overflow_policy!r} must be 'drop' or 'spin'")
        spin_limit_us = _ranged("spin_limit_us", spin_limit_us, 0, 1000)
        # accepted for parity with the native logger; this flusher wakes on an event instead
        _ranged("emergency_poll_us", emergency_poll_us, 10, 100_000)
        clock_check_interval_s = _number("clock_check_interval_s", clock_check_interval_s, 86_400)
        if not isinstance(durable_kill_switch, bool):
            raise TypeError("durable_kill_switch must be a bool")
        key = parse_hmac_key(hmac_key)

        self._closed = True  # until fully opened (so __del__/close are safe on failure)
        self._forked = False
        self._dir = os.path.abspath(os.fspath(directory))
        self._key = key
        self._interval = flush_interval_ms / 1000.0
        self._seg_capacity = (segment_size_mb * _MiB - HEADER_SIZE) // RECORD_SIZE
        self._spin_ns = spin_limit_us * 1000 if overflow_policy == "spin" else 0
        self._durable_ks = durable_kill_switch
        self._clock_interval_ns = int(clock_check_interval_s * 1e9)
        self._clock_next_ns = 0
        self._clock_state: Optional[int] = None
        self._recovery_notes: list[str] = []
        self._pid = os.getpid()
        self._host = socket.gethostname()

        os.makedirs(self._dir, exist_ok=True)
        self._dir_fd = os.open(self._dir, os.O_RDONLY)
        try:
            fcntl.flock(self._dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._dir_fd)
            raise KillSwitchAuditError(
                f"{self._dir}: another audit logger holds this directory"
            ) from None
        try:
            self._open(buffer_size, emergency_buffer_size)
        except BaseException:
            self._abort_open()
            raise
        self._closed = False
        _LIVE.add(self)
        self._thread = threading.Thread(
            target=self._run, name=f"killswitch-audit-pyflusher:{self._dir}", daemon=True
        )
        self._thread.start()

    def _open(self, buffer_size: int, emergency_buffer_size: int) -> None:
        self._seg: Optional[_Segment] = None
        self._next_prepared: Optional[tuple[int, str]] = None
        self._stats_mm: Optional[mmap.mmap] = None
        self._open_state()
        self._lock = threading.Lock()
        self._main = _Ring(buffer_size)
        self._emerg = _Ring(emergency_buffer_size)
        # counters (written under self._lock by producers, by the flusher otherwise)
        self._written = 0
        self._flushed = 0
        self._system_records = 0
        self._flushes = 0
        self._bytes = 0
        self._segments = 0
        self._sink_errors = 0
        self._flushed_through = self._next_seq - 1  # every seq <= this is in the file
        self._durable_through = self._next_seq - 1  # ... and fdatasync'ed
        self._durable_wanted = -1
        self._durable_syncs = 0
        self._paused = False
        self._parked = False  # the flusher is waiting in a pause (tests wait for it)
        self._closing = False
        self._cond = threading.Condition(threading.Lock())
        self._wake = threading.Event()

        self._open_stats()
        self._activate_segment()
        self._session_first = self._next_seq
        self._write_system_records(self._session_start_records())
        self._publish_stats()

    def _abort_open(self) -> None:
        """Undo a failed open (full disk, unreadable log): release the files and the lock."""
        seg = self._seg
        if seg is not None:
            with contextlib.suppress(Exception):
                seg.mm.close()
            with contextlib.suppress(OSError):
                os.close(seg.fd)
            self._seg = None
        if self._next_prepared is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._next_prepared[1])
        if self._stats_mm is not None:
            with contextlib.suppress(Exception):
                self._stats_mm.close()
        with contextlib.suppress(OSError):
            os.close(self._dir_fd)

    # ---------------------------------------------------------------- opening

    def _open_state(self) -> None:
        notes = self._recovery_notes
        next_index, next_seq, prev_chain, keyed = _read_last_state(self._dir, self._key, notes)
        for note in notes:
            log.warning("%s", note)
        if next_index and not keyed and self._key is not None:
            log.warning("%s: continuing an unkeyed log with an HMAC key", self._dir)
        self._next_index = next_index
        self._next_seq = next_seq
        self._prev_chain = prev_chain
        # clean up a half-prepared segment from a previous run
        for name in os.listdir(self._dir):
            if name.endswith(".seg.next"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self._dir, name))

    def _open_stats(self) -> None:
        path = os.path.join(self._dir, "stats.bin")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # reserved, not sparse: a full disk fails here, never as SIGBUS on a later store
            os.posix_fallocate(fd, 0, STATS_SIZE)
            self._stats_mm = mmap.mmap(fd, STATS_SIZE)
        finally:
            os.close(fd)
        self._stats_mm[: len(STATS_MAGIC)] = STATS_MAGIC

    def _prepare_next(self) -> None:
        """Create and reserve the next segment file (`.seg.next`) ahead of need."""
        if self._next_prepared is not None:
            return
        idx = self._next_index
        path = os.path.join(self._dir, segment_name(idx) + ".next")
        size = HEADER_SIZE + self._seg_capacity * RECORD_SIZE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.posix_fallocate(fd, 0, size)  # a full disk fails here, never as SIGBUS later
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        os.close(fd)
        self._next_prepared = (idx, path)

    def _activate_segment(self) -> None:
        self._prepare_next()
        assert self._next_prepared is not None
        idx, tmp = self._next_prepared
        path = os.path.join(self._dir, segment_name(idx))
        fd = os.open(tmp, os.O_RDWR)
        try:
            size = HEADER_SIZE + self._seg_capacity * RECORD_SIZE
            mm = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        header = SegmentHeader(
            segment_index=idx,
            first_seq=self._next_seq,
            created_wall_ns=_time_ns(),
            pid=self._pid,
            flags=SEG_FLAG_KEYED if self._key else 0,
            capacity=self._seg_capacity,
            committed=0,
            chain_records=0,
            chain_head=ChainHasher(self._prev_chain, idx, self._key).digest(),
            prev_chain=self._prev_chain,
            host=self._host,
        )
        mm[:HEADER_SIZE] = pack_header(header)
        os.rename(tmp, path)
        self._next_prepared = None
        self._next_index = idx + 1
        self._seg = _Segment(
            path, fd, mm, idx, self._seg_capacity, ChainHasher(self._prev_chain, idx, self._key)
        )
        self._segments += 1
        with contextlib.suppress(OSError):
            os.fsync(self._dir_fd)

    def _close_segment(self, final: bool) -> None:
        seg = self._seg
        if seg is None:
            return
        head = seg.hasher.digest()
        mm = seg.mm
        _U64.pack_into(mm, HDR_OFF_CHAIN_RECORDS, seg.committed)
        mm[HDR_OFF_CHAIN_HEAD : HDR_OFF_CHAIN_HEAD + 32] = head
        flags = _U32.unpack_from(mm, HDR_OFF_FLAGS)[0] | SEG_FLAG_CLOSED
        _U32.pack_into(mm, HDR_OFF_FLAGS, flags)
        try:
            mm.flush()
            os.fdatasync(seg.fd)
        except OSError as e:
            self._sink_errors += 1
            log.error("%s: sync at close failed: %s", seg.path, e)
        mm.close()
        os.close(seg.fd)
        self._prev_chain = head
        self._seg = None

    # ---------------------------------------------------------------- hot path

    def _push(self, ring: _Ring, kind: int, flags: int, code: int, a, b, c, symbol_id) -> int:
        wall = _time_ns()
        mono = _mono_ns()
        tid = _get_tid()
        with self._lock:
            if self._closed:
                raise AuditLoggerClosed(self._closed_message())
            seq = self._next_seq
            self._next_seq = seq + 1
            head = ring.head
            if head - ring.tail >= ring.capacity:
                if self._spin_ns and self._spin(ring):
                    head = ring.head
                else:
                    if ring.drop_count == 0:
                        ring.drop_first = seq
                    ring.drop_last = seq
                    ring.drop_count += 1
                    ring.dropped_total += 1
                    return -1
            _pack_body(
                ring.buf,
                (head & ring.mask) << 6,
                seq,
                wall,
                mono,
                kind,
                flags,
                code,
                tid,
                a,
                b,
                c,
                symbol_id,
            )
            ring.head = head + 1
            self._written += 1
            return seq

    def _spin(self, ring: _Ring) -> bool:
        """Bounded wait for room (policy "spin"); called and returning with the lock held."""
        deadline = _mono_ns() + self._spin_ns
        self._wake.set()
        while _mono_ns() < deadline:
            self._lock.release()
            time.sleep(0)
            self._lock.acquire()
            if ring.head - ring.tail < ring.capacity:
                return True
        return False

    def audit_kill_switch(
        self, reason_code: int, symbol_id: int, position_size: int, pnl_cents: int
    ) -> int:
        """Audit a kill-switch event through the emergency ring; returns its seq (-1: dropped)."""
        if not (
            type(symbol_id) is int
            and type(position_size) is int
            and type(pnl_cents) is int
            and 0 <= symbol_id <= U32_MAX
            and I64_MIN <= position_size <= I64_MAX
            and I64_MIN <= pnl_cents <= I64_MAX
            and isinstance(reason_code, int)
            and not isinstance(reason_code, bool)
            and 0 <= reason_code <= U16_MAX
        ):  # the slow path names the bad argument
            _check_u("reason_code", reason_code, U16_MAX)
            symbol_id = _check_u("symbol_id", symbol_id, U32_MAX)
            position_size = _check_i64("position_size", position_size)
            pnl_cents = _check_i64("pnl_cents", pnl_cents)
        seq = self._push(
            self._emerg,
            _K_KILL_SWITCH,
            REC_FLAG_EMERGENCY,
            int(reason_code),
            position_size,
            pnl_cents,
            0,
            symbol_id,
        )
        self._wake.set()
        return seq

    def audit_trade(
        self, symbol_id: int, quantity: int, price_cents: int, order_id: int = 0
    ) -> int:
        """Audit a trade through the main ring; returns its seq (-1: dropped)."""
        if not (
            type(symbol_id) is int
            and type(quantity) is int
            and type(price_cents) is int
            and type(order_id) is int
            and 0 <= symbol_id <= U32_MAX
            and I64_MIN <= quantity <= I64_MAX
            and I64_MIN <= price_cents <= I64_MAX
            and 0 <= order_id <= U64_MAX
        ):  # the slow path names the bad argument (and accepts int subclasses)
            symbol_id = _check_u("symbol_id", symbol_id, U32_MAX)
            quantity = _check_i64("quantity", quantity)
            price_cents = _check_i64("price_cents", price_cents)
            order_id = _check_u("order_id", order_id, U64_MAX)
        return self._push(self._main, _K_TRADE, 0, 0, quantity, price_cents, order_id, symbol_id)

    def audit(
        self,
        kind: int,
        code: int = 0,
        symbol_id: int = 0,
        a: int = 0,
        b: int = 0,
        c: int = 0,
        emergency: bool = False,
    ) -> int:
        """Audit any record kind (not the flusher's own); `emergency=True` (always for
        KILL_SWITCH) uses the emergency ring. Returns its seq (-1: dropped)."""
        k = _check_u("kind", kind, U8_MAX)
        if k == 0 or k >= 64:
            raise ValueError(
                f"kind {k} is not an application record kind (1..=63; 64+ are the flusher's)"
            )
        code = _check_u("code", code, U16_MAX)
        sym = _check_u("symbol_id", symbol_id, U32_MAX)
        a = _check_i64("a", a)
        b = _check_i64("b", b)
        c = _check_u("c", c, U64_MAX)
        if not isinstance(emergency, bool):
            raise TypeError("emergency must be a bool")
        if emergency or k == _K_KILL_SWITCH:
            seq = self._push(self._emerg, k, REC_FLAG_EMERGENCY, code, a, b, c, sym)
            self._wake.set()
            return seq
        return self._push(self._main, k, 0, code, a, b, c, sym)

    # ---------------------------------------------------------------- barriers

    def flush(self, timeout: Optional[float] = None, durable: bool = False) -> bool:
        """Barrier: True once every record audited before the call is in the segment file
        (readable by another process); `durable=True` also waits for fdatasync. False on
        timeout."""
        self._check_open()
        timeout = self._timeout(timeout)
        with self._lock:
            target = self._next_seq - 1
        if durable:
            return self.wait_durable(target, timeout)
        return self._wait_for(lambda: self._flushed_through >= target, timeout)

    @staticmethod
    def _timeout(timeout: Any) -> Optional[float]:
        if timeout is None:
            return None
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
        if not timeout >= 0 or timeout == float("inf"):
            raise ValueError(f"timeout must be >= 0 seconds, got {timeout}")
        return float(timeout)

    def wait_durable(self, seq: int, timeout: Optional[float] = None) -> bool:
        """True once record `seq` (and every record audited before it) is fdatasync'ed."""
        self._check_open()
        seq = _int("seq", seq)
        timeout = self._timeout(timeout)
        with self._cond:
            if seq > self._durable_wanted:
                self._durable_wanted = seq
        return self._wait_for(lambda: self._durable_through >= seq, timeout)

    def _wait_for(self, pred, timeout: Optional[float]) -> bool:
        deadline = None if timeout is None else time.monotonic() + max(0.0, float(timeout))
        with self._cond:
            while not pred():
                if self._closed or not self._thread.is_alive():
                    return pred()
                self._wake.set()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(0.05 if remaining is None else min(remaining, 0.05))
            return True

    # ---------------------------------------------------------------- flusher

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            with self._cond:
                while self._paused and not self._closing:
                    self._parked = True
                    self._cond.notify_all()
                    self._cond.wait(0.05)
                self._parked = False
                closing = self._closing
            try:
                self._flush_pass()
            except Exception as e:  # disk errors: count, back off, retry; never die
                self._sink_errors += 1
                log.error("audit flusher pass failed (%s); retrying", e)
                time.sleep(min(0.1, self._interval * 10))
                if closing:
                    # one more try, then give up so close() can finish
                    try:
                        self._flush_pass()
                    except Exception:
                        log.exception("final audit flush failed; records may be lost")
                    return
                continue
            if closing:
                return

    def _flush_pass(self) -> None:
        lock = self._lock
        with lock:
            claimed = self._next_seq - 1
            e_tail, e_head = self._emerg.tail, self._emerg.head
            m_tail, m_head = self._main.tail, self._main.head
            gaps = []
            for ring_id, ring in ((Ring.EMERGENCY, self._emerg), (Ring.MAIN, self._main)):
                if ring.drop_count:
                    gaps.append((ring_id, ring.drop_first, ring.drop_count, ring.drop_last))
                    ring.drop_count = 0
        wrote_emergency = False
        if e_head > e_tail:
            self._write_chunk(self._emerg.copy_out(e_tail, e_head), e_head - e_tail)
            self._emerg.tail = e_head
            wrote_emergency = True
        if gaps:
            self._write_system_records(
                [(RecordKind.GAP, int(r), first, count, last) for r, first, count, last in gaps]
            )
        # the main ring in bounded chunks, so an emergency record never waits behind it long
        tail = m_tail
        while tail < m_head:
            n = min(m_head - tail, 8192)
            wrote = self._write_chunk(self._main.copy_out(tail, tail + n), n, main=True)
            tail += wrote
            self._main.tail = tail
            if wrote < n:
                break  # no room (disk full): the rest waits in the ring, the reserve stays free
            if self._emerg.head > self._emerg.tail:
                with lock:
                    et, eh = self._emerg.tail, self._emerg.head
                self._write_chunk(self._emerg.copy_out(et, eh), eh - et)
                self._emerg.tail = eh
                wrote_emergency = True
        seg = self._seg
        sync = (
            wrote_emergency and self._durable_ks
        ) or self._durable_wanted > self._durable_through
        if sync and seg is not None:
            seg.mm.flush()
            os.fdatasync(seg.fd)
            self._durable_syncs += 1
        now = _mono_ns()
        if now >= self._clock_next_ns:
            self._clock_next_ns = now + self._clock_interval_ns
            clk = self._clock_record()
            if clk[1] != self._clock_state:
                self._clock_state = clk[1]
                self._write_system_records([clk])
        self._flushes += 1
        self._publish_stats()
        with self._cond:
            if tail == m_head:  # a main backlog that found no room is not flushed
                self._flushed_through = max(self._flushed_through, claimed)
                if sync:
                    self._durable_through = max(self._durable_through, claimed)
            self._cond.notify_all()

    def _reserve(self) -> int:
        """Slots at the end of each segment that main-ring records never take while no next
        segment is reserved: room for kill-switch and system records on a full disk (as the
        native engine does)."""
        return min(1024, self._seg_capacity // 16)

    def _write_chunk(
        self, chunk: bytearray, n: int, system: bool = False, main: bool = False
    ) -> int:
        """Stamp CRCs and append `n` records to the segment(s), rolling as needed. Main-ring
        records (`main`) stop short of the reserve when no next segment can be had: returns
        how many were written (always `n` for emergency and system records)."""
        stamp_crcs(chunk, n)
        mv = memoryview(chunk)
        done = 0
        try:
            while done < n:
                seg = self._seg
                if main and seg is not None and self._next_prepared is None:
                    if seg.free <= self._reserve():
                        try:
                            self._prepare_next()
                        except OSError:
                            self._sink_errors += 1
                            break
                if seg is None or seg.free == 0 or (main and seg.free <= self._reserve()):
                    if seg is not None:
                        self._close_segment(final=False)
                    self._activate_with_retry()
                    seg = self._seg
                    assert seg is not None
                take = min(n - done, seg.free)
                part = mv[done * RECORD_SIZE : (done + take) * RECORD_SIZE]
                off = HEADER_SIZE + seg.committed * RECORD_SIZE
                seg.mm[off : off + take * RECORD_SIZE] = part
                seg.hasher.update(part)
                part.release()
                seg.committed += take
                # records first, then the committed count (and the chain covering them)
                _U64.pack_into(seg.mm, HDR_OFF_COMMITTED, seg.committed)
                _U64.pack_into(seg.mm, HDR_OFF_CHAIN_RECORDS, seg.committed)
                seg.mm[HDR_OFF_CHAIN_HEAD : HDR_OFF_CHAIN_HEAD + 32] = seg.hasher.digest()
                done += take
                if seg.free < seg.capacity // 2 and self._next_prepared is None:
                    try:
                        self._prepare_next()
                    except OSError as e:
                        self._sink_errors += 1
                        log.error("preparing the next segment failed: %s", e)
        finally:
            mv.release()
        if system:
            self._system_records += done
        else:
            self._flushed += done
        self._bytes += done * RECORD_SIZE
        return done

    def _activate_with_retry(self) -> None:
        """Open the next segment; on a disk error (ENOSPC, EIO) count, back off and retry
        (the records wait in the rings meanwhile; the overflow policy applies to new ones).
        Gives up (raises) only when closing and the error persists."""
        delay = 0.001
        failures = 0
        while True:
            try:
                self._activate_segment()
                return
            except OSError as e:
                self._sink_errors += 1
                failures += 1
                if failures == 1 or failures % 100 == 0:
                    log.error("cannot open the next audit segment (%s); retrying", e)
                if self._closing and failures >= 20:
                    raise
                self._publish_stats()
                time.sleep(delay)
                delay = min(delay * 2, 0.1)

    def _write_system_records(self, recs: list[tuple[int, int, int, int, int]]) -> None:
        """Write flusher records (kind, code, a, b, c) with fresh seqs, SYSTEM-flagged."""
        if not recs:
            return
        buf = bytearray(len(recs) * RECORD_SIZE)
        with self._lock:
            first = self._next_seq
            self._next_seq += len(recs)
        wall, mono = _time_ns(), _mono_ns()
        for i, (kind, code, a, b, c) in enumerate(recs):
            _pack_body(
                buf,
                i * RECORD_SIZE,
                first + i,
                wall,
                mono,
                int(kind),
                REC_FLAG_SYSTEM,
                code,
                0,
                a,
                b,
                c,
                0,
            )
        self._write_chunk(buf, len(recs), system=True)

    def _clock_record(self) -> tuple[int, int, int, int, int]:
        """A CLOCK record (kind, state, est error us, max error us, status) of the kernel's
        synchronisation state; `self._clock_state` remembers the state written."""
        clk = _adjtimex()
        if clk is None:
            clk = (int(ClockSync.UNKNOWN), 0, 0, 0)
        return (int(RecordKind.CLOCK), *clk)

    def _session_start_records(self) -> list[tuple[int, int, int, int, int]]:
        clk = self._clock_record()
        self._clock_state = clk[1]
        self._clock_next_ns = _mono_ns() + self._clock_interval_ns
        return [(RecordKind.SESSION_START, 0, self._pid, self._next_seq, VERSION), clk]

    def _publish_stats(self) -> None:
        mm = self._stats_mm
        if mm is None:
            return
        st = self._stats_values()
        STATS_STRUCT.pack_into(mm, 0, STATS_MAGIC, *(int(st[k]) & U64_MAX for k in STATS_FIELDS))

    def _stats_values(self) -> dict[str, int]:
        last = self._next_seq - 1
        return {
            "pid": self._pid,
            "updated_wall_ns": _time_ns(),
            "records_written": self._written,
            "records_flushed": self._flushed,
            "dropped_main": self._main.dropped_total,
            "dropped_emergency": self._emerg.dropped_total,
            "main_ring_len": len(self._main),
            "main_ring_capacity": self._main.capacity,
            "emergency_ring_len": len(self._emerg),
            "emergency_ring_capacity": self._emerg.capacity,
            "flushes": self._flushes,
            "bytes_written": self._bytes,
            "segments": self._segments,
            "sink_errors": self._sink_errors,
            "last_seq": max(last, 0),
        }

    # ---------------------------------------------------------------- test hooks

    def pause_flusher(self, timeout: float = 5.0) -> bool:
        """Test hook: hold the flusher before its next pass (records stay in the rings).
        Returns once the flusher is parked (True), or after `timeout` seconds (False)."""
        self._check_open()
        deadline = time.monotonic() + timeout
        with self._cond:
            self._paused = True
            self._wake.set()
            while not self._parked and self._thread.is_alive():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))
        return True

    def resume_flusher(self) -> None:
        """Test hook: let the flusher run again."""
        with self._cond:
            self._paused = False
            self._cond.notify_all()
        self._wake.set()

    def _set_paused(self, paused: bool) -> None:
        """Test hook with the native logger's name: pause (True) or resume (False)."""
        if paused:
            self.pause_flusher()
        else:
            self.resume_flusher()

    @contextlib.contextmanager
    def flusher_paused(self) -> Iterator[None]:
        """Test hook: `with logger.flusher_paused(): ...` fills the rings without draining."""
        self.pause_flusher()
        try:
            yield
        finally:
            self.resume_flusher()

    # ---------------------------------------------------------------- lifecycle

    def get_stats(self) -> dict[str, Any]:
        """Counters: see the module doc; `*_fill` are fractions of capacity."""
        st: dict[str, Any] = self._stats_values()
        st["main_ring_fill"] = st["main_ring_len"] / self._main.capacity
        st["emergency_ring_fill"] = st["emergency_ring_len"] / self._emerg.capacity
        st["system_records"] = self._system_records
        st["durable_syncs"] = self._durable_syncs
        st["clock_state"] = -1 if self._clock_state is None else self._clock_state
        st["directory"] = self._dir
        st["backend"] = "python"
        del st["updated_wall_ns"]
        return st

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def directory(self) -> str:
        return self._dir

    @property
    def recovery_notes(self) -> list[str]:
        """What the logger found when it opened an existing directory."""
        return list(self._recovery_notes)

    def _abandon(self) -> None:
        """For the child of a fork(): mark closed without touching the parent's files."""
        self._mark_forked()

    def _closed_message(self) -> str:
        if self._forked:
            return (
                f"this audit logger belongs to process {self._pid}; after fork() the child "
                "must create its own logger (on another directory)"
            )
        return "the audit logger is closed"

    def _check_open(self) -> None:
        if self._closed:
            raise AuditLoggerClosed(self._closed_message())

    def _mark_forked(self) -> None:
        # in the child: the flusher thread does not exist here, the locks may be held by
        # threads that do not exist either; never touch the files or join anything
        self._forked = True
        self._closed = True
        self._lock = threading.Lock()
        self._cond = threading.Condition(threading.Lock())
        with contextlib.suppress(OSError):
            os.close(self._dir_fd)  # the child's copy of the flock'ed descriptor
        _LIVE.discard(self)

    def close(self) -> None:
        """Drain both rings, write SESSION_END, close the segment. Idempotent."""
        if self._forked:
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True  # producers now get AuditLoggerClosed
        with self._cond:
            self._closing = True
            self._paused = False
            self._cond.notify_all()
        self._wake.set()
        if threading.current_thread() is not self._thread:
            self._thread.join()
        try:
            self._flush_pass()  # anything left (e.g. the flusher died on a disk error)
            if self._declare_unwritable_main():
                self._flush_pass()  # writes the GAP record into the reserve
            self._write_system_records(
                [
                    (
                        RecordKind.SESSION_END,
                        0,
                        self._written,
                        self._main.dropped_total,
                        self._emerg.dropped_total,
                    )
                ]
            )
            self._close_segment(final=True)
        except Exception as e:
            self._sink_errors += 1
            log.error("closing the audit log failed: %s", e)
        finally:
            self._publish_stats()
            if self._next_prepared is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self._next_prepared[1])
                self._next_prepared = None
            if self._stats_mm is not None:
                self._stats_mm.close()
                self._stats_mm = None
            with contextlib.suppress(OSError):
                os.close(self._dir_fd)
            with self._cond:
                self._cond.notify_all()
            _LIVE.discard(self)

    def _declare_unwritable_main(self) -> bool:
        """At close, main-ring records that found no room (disk still full) are counted as
        dropped, so a GAP record and SESSION_END declare them. True when there were any."""
        ring = self._main
        with self._lock:
            tail, head = ring.tail, ring.head
            if head == tail:
                return False
            seqs = [
                _U64.unpack_from(ring.buf, (i & ring.mask) * RECORD_SIZE)[0]
                for i in (tail, head - 1)
            ]
            if ring.drop_count == 0:
                ring.drop_first, ring.drop_last = seqs
            else:
                ring.drop_first = min(ring.drop_first, seqs[0])
                ring.drop_last = max(ring.drop_last, seqs[1])
            ring.drop_count += head - tail
            ring.dropped_total += head - tail
            ring.tail = head
        log.error("closing on a full disk: %d main-ring records could not be written", head - tail)
        return True

    def __enter__(self) -> PyAuditLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not getattr(self, "_closed", True) and not getattr(self, "_forked", False):
                self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"PyAuditLogger({self._dir!r}, {state})"
