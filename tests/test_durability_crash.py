"""Durability under crashes, with real faults: a writer SIGKILLed at random moments keeps every
flushed record; a torn tail is skipped by the reader, reported by verify and sealed on reopen."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from killswitch_audit import (
    NATIVE_AVAILABLE,
    read_audit_log,
    verify_audit_log,
)
from killswitch_audit.errors import AuditLogCorrupt
from killswitch_audit.format import (
    HEADER_SIZE,
    RECORD_SIZE,
)

if NATIVE_AVAILABLE:
    from killswitch_audit import _native
from durability_support import (
    ENGINES,
    gap_records,
    make_logger,
    needs_native,
    record_is_valid,
    run_child,
)

REPO = Path(__file__).resolve().parent.parent


def segments(directory) -> list[Path]:
    return sorted(Path(directory).glob("*.seg"))


def seqs_covered_by_gaps(records, ring: int | None = None) -> set[int]:
    out: set[int] = set()
    for g in gap_records(records, ring):
        out.update(range(g.a, g.c + 1))
    return out


CRASH_WRITER = """
import os, sys
from functools import partial
from killswitch_audit import _native
cls = partial(_native.AuditLogger, engine=sys.argv[2])
lg = cls(sys.argv[1], buffer_size=1 << 14, segment_size_mb=1)
out = os.fdopen(1, "w", buffering=1)
i = 0
first = None
while True:
    last = -1
    for _ in range(1024):
        i += 1
        if i % 32 == 0:
            s = lg.audit_kill_switch(9, i & 0xFFFF, i, -i)
        else:
            s = lg.audit_trade(i & 0xFFFF, i, 100 + i, i)
        if s < 0:
            out.write(f"DROP {i}\\n")
            continue
        last = s
        if first is None:
            first = s
            out.write(f"FIRST {s}\\n")
    # The direct engine commits each record before the call returns: no flush needed for
    # "every record returned before the kill is in the file".
    if sys.argv[2] == "direct" or lg.flush(timeout=10):
        out.write(f"F {last}\\n")
"""


def _crash_once(directory: Path, rng: random.Random, engine: str, early: bool = False) -> dict:
    """Starts a writer child, SIGKILLs it after a random delay (counted from its first record,
    or with `early` from its start: during import, recovery of the previous crash, opening);
    returns what it reported."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CRASH_WRITER), str(directory), engine],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = {"first": None, "flushed": None, "drops": 0, "lines": 0}

    def reader() -> None:
        for line in proc.stdout:
            seen["lines"] += 1
            tag, _, value = line.partition(" ")
            if tag == "FIRST":
                seen["first"] = int(value)
            elif tag == "F":
                seen["flushed"] = int(value)
            elif tag == "DROP":
                seen["drops"] += 1

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    if early:
        time.sleep(rng.uniform(0.02, 0.3))
    else:
        # wait for the child to start writing, then kill it at a random moment
        deadline = time.monotonic() + 20
        while seen["first"] is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(rng.uniform(0.0, 0.12))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=20)
    t.join(timeout=20)
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"child ended on its own: {proc.returncode} {err}"
    assert early or seen["first"] is not None, f"child never wrote: {err}"
    return seen


SELF_KILLING_WRITER = """
import os, signal, sys
from killswitch_audit import _native
lg = _native.AuditLogger(sys.argv[1], segment_size_mb=1)
seqs = [lg.audit_trade(1, i, 100, i) for i in range(int(sys.argv[2]))]
seqs.append(lg.audit_kill_switch(3, 1, 2, 3))
assert lg.flush(timeout=10)
print(max(seqs), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.fault
@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_sigkill_at_random_moments_keeps_every_flushed_record(engine, tmp_path):
    """Many SIGKILLs of a full-rate writer into one directory: after each, every record the
    child saw flushed is readable, nothing invalid is returned, no committed record is bad,
    the chain holds; the next run continues seq and chain; the final log verifies except for
    losses confined to the unflushed windows of the killed runs."""
    rng = random.Random(int(os.environ.get("KSA_CRASH_SEED", "7")))
    directory = tmp_path / "log"
    runs = int(os.environ.get("KSA_CRASH_RUNS", "24" if engine == "rings" else "12"))
    budget = time.monotonic() + (30 if engine == "rings" else 15)
    windows: list[tuple[int, int]] = []  # (flushed-through + 1, next run's first seq - 1)
    previous_max = -1
    done = early_kills = 0
    for _ in range(runs):
        if time.monotonic() > budget:
            break
        before = segments(directory)
        seen = _crash_once(directory, rng, engine, early=rng.random() < 0.25)
        done += 1
        if seen["first"] is None:  # killed before its first record: check the files only
            early_kills += 1
            windows.append((previous_max + 1, 1 << 62))
            if not segments(directory):
                continue  # killed before its first segment existed
            report = verify_audit_log(directory)
            assert not report.corrupt and not report.duplicates and report.chain_ok, str(report)
            continue
        assert seen["first"] > previous_max, "a new run reused a sequence number"
        windows = [(a, min(b, seen["first"] - 1)) for a, b in windows]
        # the segments this run touched: the previous run's last one (sealed at open) and on
        touched = [p for p in segments(directory) if not before or p >= before[-1]]
        records = [r for p in touched for r in read_audit_log(p)]  # a torn tail is skipped
        assert all(record_is_valid(r) for r in records), "reader returned a record with a bad CRC"
        seqs = [r.seq for r in records]
        assert len(seqs) == len(set(seqs)), "duplicate seq after a crash"
        present = set(seqs)
        if seen["flushed"] is not None:
            lost = seqs_covered_by_gaps(records)
            want = set(range(seen["first"], seen["flushed"] + 1)) - lost
            missing = sorted(want - present)
            assert not missing, (
                f"{len(missing)} record(s) reported flushed are not readable, first {missing[:5]}"
            )
            windows.append((seen["flushed"] + 1, 1 << 62))
        else:
            windows.append((seen["first"], 1 << 62))
        if done % 4 == 1:
            report = verify_audit_log(directory)
            assert not report.corrupt, report.corrupt
            assert not report.duplicates
            assert report.chain_ok, report.chain_errors
        previous_max = max(previous_max, *seqs)
    assert done >= 8, f"only {done} crash runs fit the time budget"

    # reopen after the last crash: seq continues past everything in the file, chain verifies
    lg = make_logger(engine, directory, segment_size_mb=1)
    if seen["first"] is not None:  # (a last run killed during import left no open segment)
        assert any("not closed" in n for n in lg.recovery_notes), lg.recovery_notes
    seq = lg.audit_kill_switch(1, 2, 3, 4)
    lg.close()
    assert seq > previous_max
    windows = [(a, min(b, seq - 1)) for a, b in windows]
    records = list(read_audit_log(directory))
    assert seq in {r.seq for r in records}
    report = verify_audit_log(directory)
    assert report.chain_ok, report.chain_errors
    assert not report.corrupt and not report.duplicates and not report.accounting_errors
    # every loss lies in a window a killed run had not reported flushed
    for lo, hi in report.unaccounted_missing:
        assert any(a <= lo and hi <= b for a, b in windows), (lo, hi, windows)
    from killswitch_audit.reader import _scan_segment

    headers = {str(p): _scan_segment(str(p), None).header for p in segments(directory)}
    last = str(segments(directory)[-1])
    assert headers[last].closed, "the final close did not seal the last segment"
    for f, off in report.torn_tails:
        # a torn tail can only be a crash's leftover: in a crashed writer's segment, right
        # after its valid records
        h = headers[f]
        assert h.flags & 4 and off == HEADER_SIZE + h.committed * RECORD_SIZE, (f, off)
    # either engine seals a crashed segment when it reopens the directory (RECOVERED)
    for f, h in headers.items():
        assert h is not None and h.closed, f"{f} left open after recovery"


@pytest.mark.fault
@needs_native
def test_torn_tail_is_skipped_by_reader_reported_by_verify_and_sealed_on_reopen(tmp_path):
    """A record half-written when the process died (simulated: a record with a broken CRC
    right after the last valid one of a killed writer's open segment) is never returned,
    is reported by `verify` with file and offset, and is cut off by the next logger."""
    d = tmp_path / "log"
    child = run_child(SELF_KILLING_WRITER, str(d), "1000")
    assert child.returncode == -signal.SIGKILL, child.stderr
    last = int(child.stdout.split()[0])
    seg = segments(d)[-1]
    good = [r for r in read_audit_log(d)]
    n_valid = sum(1 for _ in read_audit_log(seg))
    torn_off = HEADER_SIZE + n_valid * RECORD_SIZE
    with open(seg, "r+b") as f:
        f.seek(torn_off - RECORD_SIZE)
        prev = bytearray(f.read(RECORD_SIZE))
        torn = bytes(prev[:40]) + bytes(24)  # the first 40 bytes landed, the rest did not
        f.seek(torn_off)
        f.write(torn)

    after = list(read_audit_log(d))
    assert [r.seq for r in after] == [r.seq for r in good]
    assert all(record_is_valid(r) for r in after)
    assert {r.seq for r in after} >= set(range(0, last + 1)) - seqs_covered_by_gaps(after)
    with pytest.raises(AuditLogCorrupt) as exc:
        list(read_audit_log(d, strict=True))
    assert exc.value.offset == torn_off and exc.value.path == str(seg)
    report = verify_audit_log(d)
    assert not report.ok
    assert report.torn_tails == [(str(seg), torn_off)]
    assert report.first_error[:2] == (str(seg), torn_off)
    assert not report.corrupt and report.chain_ok

    lg = _native.AuditLogger(d, segment_size_mb=1)
    notes = " ".join(lg.recovery_notes)
    assert f"torn record at offset {torn_off}" in notes, notes
    nxt = lg.audit_trade(5, 5, 5)
    lg.close()
    assert nxt > last
    final = list(read_audit_log(d))
    assert [r.seq for r in final[: len(good)]] == [r.seq for r in good]
    assert nxt in {r.seq for r in final}
    report = verify_audit_log(d)
    assert report.chain_ok and not report.corrupt and not report.duplicates, report
