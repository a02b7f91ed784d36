"""Child process of the full-disk latency test: `python _full_disk_child.py DIR` on a tiny tmpfs.

Prints JSON lines: what it measured and read back while the logger was open, then whether
`close()` returned within 20 s. Exits with os._exit so a hung flusher cannot keep it alive.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter

from _timing import Timings, gc_off
from killswitch_audit import AuditLogger, RecordKind, read_audit_log

KS_ARGS = (1, 7, 100, -2_500_000)


def main(d: str) -> None:
    unloaded, full = Timings("kill switch, empty disk"), Timings("kill switch, disk full")
    log = AuditLogger(d, segment_size_mb=1)
    ks = log.audit_kill_switch
    with gc_off():
        unloaded.time(ks, 200, KS_ARGS)
    log.flush(5.0)
    # Fill the segment (16,320 slots), then the main ring (131,072), then drop.
    for i in range(200_000):
        log.audit_trade(7, 100, 10_125, i)
    deadline = time.monotonic() + 10
    while log.get_stats()["dropped_main"] == 0 and time.monotonic() < deadline:
        for i in range(10_000):
            log.audit_trade(7, 100, 10_125, i)
        time.sleep(0.01)
    stats_full = log.get_stats()
    with gc_off():
        full.time(ks, 200, KS_ARGS)
    ks_seqs = [ks(*KS_ARGS) for _ in range(50)]
    log.flush(2.0)  # cannot complete for the trades: the disk is full
    time.sleep(0.05)  # a flusher pass for the GAP records
    stats = log.get_stats()
    recs = list(read_audit_log(d))
    kills = Counter(r.seq for r in recs if r.kind == RecordKind.KILL_SWITCH)
    gap_main = sum(r.b for r in recs if r.kind == RecordKind.GAP and r.code == 0)
    out = {
        "unloaded": unloaded.line(0),
        "full": full.line(0),
        "unloaded_p50": unloaded.pct(50),
        "full_p50": full.pct(50),
        "stats_full": stats_full,
        "stats": stats,
        "ks_negative": sum(s < 0 for s in ks_seqs),
        "ks_missing": sum(kills[s] != 1 for s in ks_seqs),
        "kill_calls": len(unloaded.raw) + len(full.raw) + len(ks_seqs),
        "kill_records": sum(kills.values()),
        "gap_main": gap_main,
    }
    print(json.dumps(out), flush=True)
    closer = threading.Thread(target=log.close, daemon=True)
    closer.start()
    closer.join(20)
    done = {"close_returned": not closer.is_alive()}
    if done["close_returned"]:
        recs = list(read_audit_log(d))
        done["after_close"] = {
            "dropped_main": log.get_stats()["dropped_main"],
            "gap_main": sum(r.b for r in recs if r.kind == RecordKind.GAP and r.code == 0),
            "kill_records": sum(r.kind == RecordKind.KILL_SWITCH for r in recs),
        }
    print(json.dumps(done), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
