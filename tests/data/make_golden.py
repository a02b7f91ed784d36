"""Regenerates the golden logs in tests/data/golden/ (run by hand after a deliberate format
change: `python tests/data/make_golden.py`; then review the diff of expected.json and the
dump files). Each log is written by the real native logger (a real SIGKILL for the torn and
recovered ones), then every file is cut after its last non-zero record slot so the
repository stays small (segments are fallocated to 1 MiB; the reader reads a file shorter
than its capacity as "trailing slots cut").

- plain: trades and orders, every user kind, a scoped stop with handlers (KILL_SWITCH,
  STATE_CHANGE, TEXT, STOP_STEP, HANDLER_FAILURE), denied orders (ORDER_DENIED), a reset
  (RESET), two sessions;
- keyed: the same kind of log with an HMAC key (tests/test_reader_golden.py GOLDEN_KEY);
- gaps: a paused flusher and a tiny main ring: GAP records;
- torn: a writer SIGKILLed after a flush, then half a record written after its last one;
- recovered: the torn log reopened by a new logger (RECOVERED seal), two more records.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "golden"
KEY = bytes(range(32))


def trim(d: Path) -> None:
    """Cuts each segment after its last non-zero 64-byte slot."""
    for seg in sorted(d.glob("*.seg")):
        data = seg.read_bytes()
        end = len(data)
        while end > 4096 and not any(data[end - 64 : end]):
            end -= 64
        seg.write_bytes(data[:end])
    for extra in d.iterdir():
        if not extra.name.endswith(".seg"):
            extra.unlink()


def write_plain(d: Path, key: bytes | None) -> None:
    from killswitch_audit import AuditLogger, default_config
    from killswitch_audit.killswitch import KillSwitch, Scope

    lg = AuditLogger(d, segment_size_mb=1, hmac_key=key)
    for i in range(20):
        lg.audit_trade(7, 100 + i, 10_000 + i, i)
    for kind in (3, 4, 5, 12):  # ORDER_SENT, ORDER_CANCELLED, RISK_CHECK, USER
        lg.audit(kind, 1, 7, 5, 6, 8)
    ks = KillSwitch(lg, latency_monitor=False, config=default_config())

    def failing() -> None:
        raise RuntimeError("venue unreachable")

    ks.add_stop_handler(lambda: None, name="cancel_all")
    ks.add_stop_handler(failing, name="flatten")
    desk = Scope(strategy="mm")
    ks.emergency_stop("daily_loss_limit", 7, 250, -99, scope=desk)
    for _ in range(6):
        ks.allows(desk)
    ks.reset("alice", note="limit reviewed", scope=desk)
    lg.close()
    lg = AuditLogger(d, segment_size_mb=1, hmac_key=key)  # a second session
    lg.audit_trade(8, 1, 2, 3)
    lg.close()


def write_gaps(d: Path) -> None:
    from killswitch_audit import _native

    lg = _native.AuditLogger(d, segment_size_mb=1, buffer_size=64)
    lg._set_paused(True)
    for i in range(100):  # 64 fit, 36 dropped: one GAP record
        lg.audit_trade(1, i, 100, i)
    lg.audit_kill_switch(4, 1, 0, 0)  # the emergency ring is not affected
    lg._set_paused(False)
    lg.close()


CHILD = """
import os, signal, sys
from killswitch_audit import _native
lg = _native.AuditLogger(sys.argv[1], segment_size_mb=1)
for i in range(10):
    lg.audit_trade(3, i, 500 + i, i)
assert lg.flush(timeout=10)
os.kill(os.getpid(), signal.SIGKILL)
"""


def write_torn(d: Path) -> None:
    p = subprocess.run([sys.executable, "-c", CHILD, str(d)], check=False)
    assert p.returncode == -signal.SIGKILL, p.returncode
    seg = sorted(d.glob("*.seg"))[-1]
    data = bytearray(seg.read_bytes())
    end = 4096
    while any(data[end : end + 64]):
        end += 64
    half = bytes(data[end - 64 : end - 32]) + bytes(32)  # a record half written: no CRC
    data[end : end + 64] = half
    seg.write_bytes(bytes(data))


def write_recovered(d: Path, torn: Path) -> None:
    from killswitch_audit import _native

    shutil.copytree(torn, d)
    lg = _native.AuditLogger(d, segment_size_mb=1)
    lg.audit_trade(4, 1, 1, 1)
    lg.close()


def main() -> int:
    sys.path.insert(0, str(HERE.parent))
    from reference_decoder import decode_log

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    write_plain(OUT / "plain", None)
    write_plain(OUT / "keyed", KEY)
    write_gaps(OUT / "gaps")
    write_torn(OUT / "torn")
    write_recovered(OUT / "recovered", OUT / "torn")
    expected = {}
    for d in sorted(OUT.iterdir()):
        trim(d)
        log = decode_log(d, KEY if d.name == "keyed" else None)
        expected[d.name] = {
            "records": len(log["records"]),
            "kinds": sorted({r["kind"] for r in log["records"]}),
            "chain_ok": log["chain_ok"],
            "torn": [[os.path.basename(f), o] for f, o in log["torn"]],
            "heads": [s["chain_head"] for s in log["segments"]],
        }
        out = subprocess.run(
            [sys.executable, "-m", "killswitch_audit", "dump", str(d)],
            capture_output=True,
            text=True,
            check=False,
        )
        (OUT / f"{d.name}.dump.txt").write_text(out.stdout)
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    os.system(f"du -sh {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
