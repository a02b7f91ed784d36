"""The writer side of issue 11 ("a halt holds"), each with the real fault: a SIGKILLed child
process, bytes forged into a real segment file, a real 8 MiB tmpfs filled to the last byte,
planted symlinks, a real umask. Every test asserts on what is on disk after the fact.

RELIABILITY.md (engine section) maps each guarantee to its test here.
"""

from __future__ import annotations

import array
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from killswitch_audit import NATIVE_AVAILABLE, AuditLoggerClosed, RecordKind, read_audit_log
from killswitch_audit.errors import ConfigError
from killswitch_audit.format import chain_digest, pack_record

if NATIVE_AVAILABLE:
    from killswitch_audit import _native

pytestmark = pytest.mark.skipif(not NATIVE_AVAILABLE, reason="native extension not built")

HEADER = 4096
REC = 64
OFF_FLAGS, OFF_COMMITTED, OFF_CHAIN_RECORDS, OFF_CHAIN_HEAD, OFF_PREV = 44, 56, 64, 72, 104
OFF_WRITER_CHAINED, OFF_SEQ_RESERVED = 208, 216
FLAG_CLOSED, FLAG_KEYED, FLAG_RECOVERED = 1, 2, 4
KEY = bytes(range(32))


def u64(buf: bytes, off: int) -> int:
    return struct.unpack_from("<Q", buf, off)[0]


def header(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(HEADER)


def segments(d: Path) -> list[Path]:
    return sorted(d.glob("*.seg"))


def spawn(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,  # unbuffered: readline() must not swallow bytes os.read() expects
    )


def run_child(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ------------------------------------------------------------------------------------------
# 1. No seq handed out twice (issue 11 rows 2 and 6)

FULL_RATE_CHILD = """
    import array, os, sys
    from killswitch_audit import _native
    lg = _native.AuditLogger(sys.argv[1])
    os.write(1, b"READY\\n")
    buf = array.array("q")
    trade, ks = lg.audit_trade, lg.audit_kill_switch
    while True:
        for j in range(2048):
            s = ks(1, 1, 1, 1) if j % 64 == 0 else trade(1, j, 1)
            if s >= 0:
                buf.append(s)
        os.write(1, buf.tobytes())
        del buf[:]
"""


@pytest.mark.fault
def test_no_seq_is_handed_out_twice_after_sigkill_of_a_full_rate_writer(tmp_path):
    """A child audits at full rate through both rings and writes every seq it got back to a
    pipe; it is SIGKILLed mid-stream. The next session's first seq is above every one of
    them (before: the counter restarted after the last record on file, ~100k seqs lower)."""
    d = tmp_path / "log"
    child = spawn(FULL_RATE_CHILD, str(d))
    assert child.stdout is not None
    assert child.stdout.readline() == b"READY\n", child.stderr.read() if child.stderr else ""
    data = bytearray()
    t_end = time.monotonic() + 0.6
    while time.monotonic() < t_end:
        data += os.read(child.stdout.fileno(), 1 << 16)
    os.kill(child.pid, signal.SIGKILL)
    data += child.stdout.read()
    child.wait()
    seqs = array.array("q")
    seqs.frombytes(bytes(data[: len(data) // 8 * 8]))
    assert len(seqs) > 10_000, "the child audited too little to be a test"
    returned_max = max(seqs)
    on_file_max = max(r.seq for r in read_audit_log(d))
    lg = _native.AuditLogger(d)
    try:
        first = lg.audit_trade(1, 1, 1)
        notes = lg.recovery_notes
    finally:
        lg.close()
    assert first > returned_max, (first, returned_max, on_file_max, notes)
    assert first < 2**62


def _forge_seq_in_last_record(d: Path, seq: int) -> tuple[Path, int]:
    seg = segments(d)[-1]
    h = header(seg)
    n = u64(h, OFF_COMMITTED)
    at = HEADER + (n - 1) * REC
    with open(seg, "r+b") as f:
        f.seek(at)
        rec = bytearray(f.read(REC))
        struct.pack_into("<Q", rec, 0, seq)
        f.seek(at)
        f.write(pack_record(*struct.unpack_from("<QQQBBHIqqQI", rec)))
    return seg, at


@pytest.mark.fault
def test_a_forged_seq_2_64_minus_1_is_damage_and_the_counter_never_wraps(tmp_path):
    """One record rewritten to seq 2**64-1 (CRC recomputed): recovery names the file and
    offset, does not use it, and the next session continues above the real seqs, far below
    2**62 (before: the counter wrapped to 0 and every later halt was lost at restart)."""
    d = tmp_path / "log"
    with _native.AuditLogger(d) as lg:
        last = max(lg.audit_trade(1, i, 1) for i in range(100))
    seg, at = _forge_seq_in_last_record(d, 2**64 - 1)
    lg = _native.AuditLogger(d)
    try:
        first = lg.audit_trade(1, 1, 1)
        notes = lg.recovery_notes
    finally:
        lg.close()
    assert last < first < 2**62
    assert any(str(seg) in n and f"offset {at}" in n and "seq_reserved" in n for n in notes), notes


# ------------------------------------------------------------------------------------------
# 2. Recovery never seals unverified records as genuine (row 5)

CHAINED_CHILD = """
    import sys, time
    from killswitch_audit import _native
    lg = _native.AuditLogger(sys.argv[1], hmac_key=bytes(range(32)))
    for i in range(100):
        lg.audit_trade(1, i, 1)
    lg.audit_kill_switch(1, 0, 0, 0)
    assert lg.flush(timeout=10, chained=True)
    print("CHAINED", flush=True)
    time.sleep(60)
"""


@pytest.mark.fault
@pytest.mark.parametrize("damage", ["forged_tail", "writer_head_damaged"])
def test_recovery_records_what_the_dead_writer_chained_and_never_vouches_for_the_rest(
    tmp_path, damage
):
    """SIGKILL a keyed writer after a chained flush, forge RESET records after its last one
    (valid CRCs), reopen with the key: the segment is sealed with RECOVERED, `writer_chained`
    = the dead writer's own chain_records (the forged records lie after it) and a note names
    them. If the writer's own chain head does not verify, writer_chained is 0 and a note
    names the file and the chain_head offset (before: forged records sealed as genuine)."""
    d = tmp_path / "log"
    child = spawn(CHAINED_CHILD, str(d))
    assert child.stdout is not None
    line = child.stdout.readline()
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert line == b"CHAINED\n", child.stderr.read() if child.stderr else ""
    seg = segments(d)[-1]
    h = header(seg)
    assert u64(h, OFF_FLAGS) & FLAG_CLOSED == 0
    chained = u64(h, OFF_CHAIN_RECORDS)
    valid = [r for r in read_audit_log(seg)]
    assert chained >= 102 and chained <= len(valid)
    n = len(valid)
    next_seq = max(r.seq for r in valid) + 1
    forged = b"".join(
        pack_record(next_seq + i, valid[-1].wall_ns, valid[-1].mono_ns, int(RecordKind.RESET))
        for i in range(3)
    )
    with open(seg, "r+b") as f:
        f.seek(HEADER + n * REC)
        f.write(forged)
        if damage == "writer_head_damaged":
            f.seek(OFF_CHAIN_HEAD)
            b = f.read(1)
            f.seek(OFF_CHAIN_HEAD)
            f.write(bytes([b[0] ^ 0xFF]))
    lg = _native.AuditLogger(d, hmac_key=KEY)
    notes = lg.recovery_notes
    lg.close()
    h = header(seg)
    flags = u64(h, OFF_FLAGS) & 0xFFFFFFFF
    assert flags & (FLAG_CLOSED | FLAG_RECOVERED) == FLAG_CLOSED | FLAG_RECOVERED
    assert u64(h, OFF_COMMITTED) == n + 3
    writer_chained = u64(h, OFF_WRITER_CHAINED)
    if damage == "forged_tail":
        assert writer_chained == chained, notes
        assert any(f"records {chained}..{n + 3}" in x and "never chained" in x for x in notes)
    else:
        assert writer_chained == 0, notes
        assert any(str(seg) in x and f"offset {OFF_CHAIN_HEAD}" in x for x in notes), notes


# ------------------------------------------------------------------------------------------
# 3. Keyed stays keyed (row 8, writer side)


def test_a_keyed_directory_refuses_a_writer_without_the_key(tmp_path):
    d = tmp_path / "log"
    with _native.AuditLogger(d, hmac_key=KEY) as lg:
        lg.audit_trade(1, 1, 1)
    before = segments(d)
    with pytest.raises(ConfigError, match="hmac_key_env") as e:
        _native.AuditLogger(d)
    assert str(d) in str(e.value) and "KEYED" in str(e.value)
    assert segments(d) == before, "the refused writer left a segment behind"


def test_a_keyed_writer_refuses_an_unkeyed_directory(tmp_path):
    d = tmp_path / "log"
    with _native.AuditLogger(d) as lg:
        lg.audit_trade(1, 1, 1)
    with pytest.raises(ConfigError, match="not keyed") as e:
        _native.AuditLogger(d, hmac_key=KEY)
    assert str(d) in str(e.value)


def test_the_wrong_key_is_refused_at_open(tmp_path):
    d = tmp_path / "log"
    with _native.AuditLogger(d, hmac_key=KEY) as lg:
        lg.audit_trade(1, 1, 1)
    before = segments(d)
    with pytest.raises(ConfigError, match="does not verify with the given HMAC key"):
        _native.AuditLogger(d, hmac_key=b"another key")
    assert segments(d) == before
    with _native.AuditLogger(d, hmac_key=KEY) as lg:  # the right key still opens it
        lg.audit_trade(1, 1, 1)


# ------------------------------------------------------------------------------------------
# 4. A full disk keeps halts (row 10)


@pytest.fixture
def tmpfs_8m():
    """An 8 MiB tmpfs (needs root); unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) for a small tmpfs")
    mnt = Path(tempfile.mkdtemp(prefix="ksa-engine-tmpfs-"))
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        mnt.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        shutil.rmtree(mnt, ignore_errors=True)


FULL_DISK_CHILD = """
    import json, os, sys, time
    from killswitch_audit import _native
    mnt = sys.argv[1]
    lg = _native.AuditLogger(mnt + "/log", segment_size_mb=1)
    errno = None
    fd = os.open(mnt + "/filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\\0" * 65536)
    except OSError as e:
        errno = e.errno
    os.close(fd)
    # trades until they drop (no room for a next segment), then keep dropping for a while:
    # before the fix, each flusher pass wrote a GAP record into the kill-switch reserve
    i = 0
    while lg.audit_trade(1, i, 1) >= 0:
        i += 1
    t_end = time.monotonic() + 0.5
    while time.monotonic() < t_end:
        lg.audit_trade(1, i, 1)
        time.sleep(0.0001)
    ks = []
    for j in range(300):
        ks.append(lg.audit_kill_switch(1, j, 0, 0))
        lg.audit_trade(1, j, 1)
        time.sleep(0.0002)
    flushed = lg.flush_emergency(timeout=5)
    t = time.monotonic()
    lg.close()
    print(json.dumps({"errno": errno, "ks": ks, "flushed": flushed,
                      "close_s": time.monotonic() - t, "stats": lg.get_stats()}))
"""


@pytest.mark.fault
def test_a_full_disk_keeps_every_kill_switch_record_and_close_returns(tmpfs_8m):
    """8 MiB tmpfs filled by a filler file, trades dropping for 0.5 s, then 300 kill-switch
    records: flush_emergency succeeds, every one is in the file read back, and close() on
    the still-full disk returns within 1 s (before: GAP records used up the reserve and the
    kill switches never reached the file)."""
    r = run_child(FULL_DISK_CHILD, str(tmpfs_8m), timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["errno"] == 28, "the filler did not fill the disk"
    assert out["stats"]["dropped_main"] > 0, "the disk was not full for the logger"
    assert all(s >= 0 for s in out["ks"])
    present = {rec.seq for rec in read_audit_log(tmpfs_8m / "log")}
    lost = [s for s in out["ks"] if s not in present]
    assert not lost, f"{len(lost)} kill-switch record(s) lost, e.g. {lost[:5]}"
    assert out["flushed"]
    assert out["close_s"] < 1.0, out["close_s"]


# ------------------------------------------------------------------------------------------
# 5. Files (row 13)


def test_a_symlink_planted_as_stats_bin_is_replaced_and_its_target_untouched(tmp_path):
    d = tmp_path / "log"
    d.mkdir(mode=0o750)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (d / "stats.bin").symlink_to(victim)
    with _native.AuditLogger(d) as lg:
        lg.audit_trade(1, 1, 1)
        lg.flush(timeout=10)
    assert victim.read_bytes() == b"precious"
    assert not (d / "stats.bin").is_symlink() and (d / "stats.bin").stat().st_size == 4096


def test_a_symlink_planted_as_the_next_segment_is_never_followed(tmp_path):
    """While segment 0 is written, `000000000001.seg.next` is planted as a symlink to a victim
    file; the logger rolls into segments 1 and 2: the victim is untouched and every record is
    in the log."""
    d = tmp_path / "log"
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    lg = _native.AuditLogger(d, segment_size_mb=1)
    (d / "000000000001.seg.next").symlink_to(victim)
    seqs = [lg.audit_trade(1, i, 1) for i in range(40_000)]
    assert lg.flush(timeout=10)
    lg.close()
    assert victim.read_bytes() == b"precious"
    assert len(segments(d)) >= 3
    assert not any(p.is_symlink() for p in d.iterdir())
    present = {r.seq for r in read_audit_log(d)}
    assert set(s for s in seqs if s >= 0) <= present


UMASK_CHILD = """
    import os, sys
    os.umask(0)
    from killswitch_audit import _native
    with _native.AuditLogger(sys.argv[1]) as lg:
        lg.audit_trade(1, 1, 1)
    with _native.AuditLogger(sys.argv[2], file_mode=0o600, dir_mode=0o700) as lg:
        lg.audit_trade(1, 1, 1)
"""


def test_modes_are_0640_and_0750_whatever_the_umask_and_configurable(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    r = run_child(UMASK_CHILD, str(a), str(b))
    assert r.returncode == 0, r.stderr
    for d, fmode, dmode in [(a, 0o640, 0o750), (b, 0o600, 0o700)]:
        assert d.stat().st_mode & 0o7777 == dmode
        files = [*segments(d), d / "stats.bin"]
        assert files and all(p.stat().st_mode & 0o7777 == fmode for p in files), [
            (p.name, oct(p.stat().st_mode)) for p in files
        ]


def test_a_world_writable_or_foreign_log_directory_is_refused(tmp_path):
    d = tmp_path / "log"
    d.mkdir()
    d.chmod(0o777)
    with pytest.raises(PermissionError, match="world-writable") as e:
        _native.AuditLogger(d)
    assert str(d) in str(e.value)
    assert not list(d.iterdir()), "the refused open left files behind"
    if os.geteuid() == 0:
        d.chmod(0o750)
        os.chown(d, 54321, 54321)
        with pytest.raises(PermissionError, match="owned by uid 54321"):
            _native.AuditLogger(d)
    with pytest.raises(ValueError, match="file_mode"):
        _native.AuditLogger(tmp_path / "x", file_mode=0o666)


def test_a_regular_file_as_log_directory_is_a_clear_error(tmp_path):
    f = tmp_path / "not_a_dir"
    f.write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="is not a directory") as e:
        _native.AuditLogger(f)
    assert str(f) in str(e.value)


def test_a_failed_open_leaves_no_fallocated_segment_behind(tmp_path):
    d = tmp_path / "log"
    d.mkdir(mode=0o750)
    (d / "stats.bin").mkdir()  # stats.bin cannot be created
    with pytest.raises(OSError, match=r"stats\.bin"):
        _native.AuditLogger(d)
    assert not [p for p in d.iterdir() if ".seg" in p.name]


# ------------------------------------------------------------------------------------------
# 6./7. No panic crosses the FFI; use after close (rows 14, 15)


@pytest.mark.parametrize(
    ("call", "exc", "name"),
    [
        (lambda lg: lg.flush(timeout=1e19), OverflowError, "timeout"),
        (lambda lg: lg.flush(timeout=1e300), OverflowError, "timeout"),
        (lambda lg: lg.flush(timeout=float("nan")), ValueError, "timeout"),
        (lambda lg: lg.flush(timeout=-1.0), ValueError, "timeout"),
        (lambda lg: lg.flush_emergency(timeout=1e19), OverflowError, "timeout"),
        (lambda lg: lg.flush_emergency(timeout=float("nan")), ValueError, "timeout"),
        (lambda lg: lg.flush_emergency(timeout=-5), ValueError, "timeout"),
    ],
)
def test_absurd_timeouts_raise_a_named_error_not_a_panic(tmp_path, call, exc, name):
    with _native.AuditLogger(tmp_path / "log") as lg:
        with pytest.raises(exc, match=name):
            call(lg)
        assert lg.flush(timeout=1e9)  # huge but representable: no deadline overflow


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"flush_interval_ms": 1e300}, "flush_interval_ms"),
        ({"flush_interval_ms": float("inf")}, "flush_interval_ms"),
        ({"flush_interval_ms": float("nan")}, "flush_interval_ms"),
        ({"flush_interval_ms": -1.0}, "flush_interval_ms"),
        ({"clock_check_interval_s": 1e300}, "clock_check_interval_s"),
        ({"clock_check_interval_s": -1.0}, "clock_check_interval_s"),
        ({"file_mode": -1}, "file_mode"),
        ({"dir_mode": 2**40}, "dir_mode"),
    ],
)
def test_absurd_constructor_values_raise_a_named_error_not_a_panic(tmp_path, kwargs, name):
    with pytest.raises((ValueError, OverflowError), match=name):
        _native.AuditLogger(tmp_path / "log", **kwargs)


def test_flush_after_close_raises_audit_logger_closed(tmp_path):
    lg = _native.AuditLogger(tmp_path / "log")
    lg.audit_trade(1, 1, 1)
    lg.close()
    with pytest.raises(AuditLoggerClosed):
        lg.flush()
    with pytest.raises(AuditLoggerClosed):
        lg.flush_emergency(timeout=1)


# ------------------------------------------------------------------------------------------
# 8. The lead's APIs: flush_emergency, flush(chained=True)


def _committed_seqs(seg: Path) -> set[int]:
    data = seg.read_bytes()
    n = u64(data, OFF_COMMITTED)
    return {u64(data, HEADER + i * REC) for i in range(n)}


def test_flush_emergency_commits_kill_switch_records_without_the_main_ring(tmp_path):
    """flush_emergency returns once the kill-switch record is covered by the header's
    `committed` (what survives kill -9), while a huge main-ring backlog waits."""
    d = tmp_path / "log"
    with _native.AuditLogger(d, flush_interval_ms=10_000) as lg:
        for i in range(50_000):
            lg.audit_trade(1, i, 1)
        seq = lg.audit_kill_switch(3, 0, 0, 0)
        assert lg.flush_emergency(timeout=10)
        assert seq in _committed_seqs(segments(d)[-1])


def test_chained_flush_covers_every_record_with_the_header_chain_head(tmp_path):
    d = tmp_path / "log"
    with _native.AuditLogger(d, hmac_key=KEY) as lg:
        seqs = [lg.audit_trade(1, i, 1) for i in range(1000)]
        assert lg.flush(timeout=10, chained=True)
        seg = segments(d)[-1]
        data = seg.read_bytes()
        n = u64(data, OFF_CHAIN_RECORDS)
        body = data[HEADER : HEADER + n * REC]
        assert set(seqs) <= {u64(body, i * REC) for i in range(n)}
        head = chain_digest(data[OFF_PREV : OFF_PREV + 32], 0, body, KEY)
        assert head == data[OFF_CHAIN_HEAD : OFF_CHAIN_HEAD + 32]


def test_a_closed_segment_gives_its_unused_tail_back_to_the_disk(tmp_path):
    """A logger fallocates its whole segment at open; at close the blocks after the last record
    are punched out (size kept, so readers see the same file), and what ten records cost on
    disk is a few KiB, not `segment_size_mb`."""
    probe = tmp_path / "probe"
    with open(probe, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, 1 << 20)
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            punch = libc.fallocate(f.fileno(), 0x02 | 0x01, 4096, (1 << 20) - 4096)
        except Exception:
            punch = -1
    if punch != 0:
        pytest.skip("this filesystem does not punch holes")
    d = tmp_path / "log"
    from killswitch_audit import AuditLogger, verify_audit_log

    lg = AuditLogger(d, segment_size_mb=8)
    for i in range(10):
        lg.audit_trade(i, 1, 100)
    seg = d / "000000000000.seg"
    assert seg.stat().st_blocks * 512 >= 8 << 20  # the whole segment while open
    lg.close()
    st = seg.stat()
    assert st.st_size == 8 << 20
    assert st.st_blocks * 512 <= 64 << 10, st.st_blocks
    assert verify_audit_log(d).ok
    assert sum(1 for r in read_audit_log(d) if r.kind == RecordKind.TRADE) == 10


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda lg: lg.audit_trade("x", 1, 2), "symbol_id"),
        (lambda lg: lg.audit_trade(1, 2**70, 2), "quantity"),
        (lambda lg: lg.audit_trade(-1, 1, 2), "symbol_id"),
        (lambda lg: lg.audit_kill_switch(1, 2, 3, 2**64), "pnl_cents"),
        (lambda lg: lg.audit_kill_switch("nope", 1, 2, 3), "reason_code"),
    ],
)
def test_a_bad_audit_argument_is_named_in_the_error(tmp_path, call, name):
    """The hot audit calls keep PyO3's typed extraction (a hand-written one cost 18% more
    instructions per call under callgrind); PyO3 names the argument in a PEP 678 note, which
    every traceback on 3.11+ prints ("while processing 'symbol_id'")."""
    from killswitch_audit import AuditLogger

    with AuditLogger(tmp_path / "log", segment_size_mb=1) as lg:
        with pytest.raises((TypeError, OverflowError)) as err:
            call(lg)
    notes = getattr(err.value, "__notes__", [])
    if sys.version_info < (3, 11):
        pytest.skip("exception notes (PEP 678) need Python 3.11")
    assert any(name in n for n in notes), notes
