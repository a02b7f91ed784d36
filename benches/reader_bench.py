"""The one reader, measured against its peer in the same run (issue 12).

Writes a log of N records (default 2,000,000) with the native logger, then times, best of
`--repeat` runs each:

- `hashlib.sha256` over the log's record bytes (the peer: what verify must reach half of);
- `verify_audit_log` (CRCs, chain, sequence accounting) over the same log;
- `read_audit_log` into Python `Record`s, and its peer: `struct.iter_unpack` of the same
  bytes into tuples (what a pure-Python reader gets at best, with no checks at all);
- `read_audit_array` into a numpy structured array (the bulk path; numpy needed), and its
  peer: `numpy.fromfile` of the same bytes (one read, no checks);
- `killswitch-audit dump` (default view) into a pipe drained by this process.

Usage: python benches/reader_bench.py [--records N] [--repeat R] [--dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", help="where to write the log (default: a temporary directory)")
    args = ap.parse_args()

    from killswitch_audit import _native
    from killswitch_audit.reader import read_audit_array, read_audit_log, verify_audit_log

    base = args.dir or tempfile.mkdtemp(prefix="reader-bench-")
    d = os.path.join(base, "log")
    try:
        lg = _native.AuditLogger(d, segment_size_mb=64)
        for i in range(args.records):
            if i % 1000 == 0:
                lg.audit_kill_switch(1, i & 0xFFFF, i, -i)
            else:
                lg.audit_trade(i & 0xFFFF, i, 10_000 + i, i)
            if i % 65536 == 0:
                lg.flush(timeout=10)
        lg.close()
        data = read_audit_array(d).tobytes()  # the records' bytes, for the peer
        n = len(data) // 64
        mb = len(data) / 1e6
        print(f"log: {n:,} records, {mb:.1f} MB of records, {len(os.listdir(d))} files")

        assert verify_audit_log(d).ok
        import numpy as np

        flat = os.path.join(base, "records.bin")  # the peer's file: the records, nothing else
        with open(flat, "wb") as f:
            f.write(data)
        dtype = read_audit_array(d).dtype
        record = struct.Struct("<QQQBBHIqqQII")
        # interleaved rounds, best of each: a busy machine slows every operation of a round
        ops = {
            "sha": lambda: hashlib.sha256(data).digest(),
            "verify": lambda: verify_audit_log(d),
            "read": lambda: list(read_audit_log(d)),
            "tuples": lambda: list(record.iter_unpack(data)),
            "array": lambda: read_audit_array(d),
            "fromfile": lambda: np.fromfile(flat, dtype=dtype),
        }
        times: dict[str, list[float]] = {k: [] for k in ops}
        for _ in range(args.repeat):
            for k, fn in ops.items():
                times[k].append(best(fn, 1))
        t_sha, t_ver, t_read, t_arr = (min(times[k]) for k in ("sha", "verify", "read", "array"))
        t_tup, t_ff = min(times["tuples"]), min(times["fromfile"])
        ratios = sorted(s / v for s, v in zip(times["sha"], times["verify"]))

        def dump() -> None:
            p = subprocess.Popen(
                [sys.executable, "-m", "killswitch_audit", "dump", d], stdout=subprocess.PIPE
            )
            assert p.stdout is not None
            while p.stdout.read(1 << 20):
                pass
            assert p.wait() == 0

        t_dump = best(dump, max(1, args.repeat - 1))

        def row(what: str, secs: float, unit: str, value: float, peer: str = "") -> None:
            print(f"  {what:<34} {secs * 1e3:9.1f} ms  {value:10.2f} {unit:<10} {peer}")

        load = os.getloadavg()[0]
        print(f"best of {args.repeat} interleaved rounds (same log, same run; load {load:.1f}):")
        row("hashlib.sha256 over the records", t_sha, "MB/s", mb / t_sha, "(peer)")
        row(
            "verify_audit_log",
            t_ver,
            "MB/s",
            mb / t_ver,
            f"{t_sha / t_ver:.0%} of sha256 (goal >= 50%; per round {ratios[0]:.0%}.."
            f"{ratios[-1]:.0%})",
        )
        row("struct.iter_unpack -> tuples", t_tup, "M rec/s", n / t_tup / 1e6, "(peer)")
        row(
            "read_audit_log -> Record",
            t_read,
            "M rec/s",
            n / t_read / 1e6,
            f"(goal >= 5; {t_tup / t_read:.1f}x the tuples)",
        )
        row("numpy.fromfile, no checks", t_ff, "M rec/s", n / t_ff / 1e6, "(peer)")
        row(
            "read_audit_array -> numpy",
            t_arr,
            "M rec/s",
            n / t_arr / 1e6,
            f"(goal >= 50; {t_ff / t_arr:.0%} of fromfile's rate)",
        )
        print("  (the list rows include freeing the list afterwards: a reader's whole cost)")
        row("killswitch-audit dump | pipe", t_dump, "M rec/s", n / t_dump / 1e6, "(goal >= 1)")
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
