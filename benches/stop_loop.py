"""`emergency_stop` in a tight loop on a halted switch (three no-op handlers): the stop path's
own percentiles, without the durable resets of the demo's stop bench.

    python benches/stop_loop.py [count]
"""

from __future__ import annotations

import gc
import sys
import tempfile
import time
from array import array

from killswitch_audit import AuditLogger, KillSwitch, KillSwitchReason


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    log = AuditLogger(tempfile.mkdtemp())
    ks = KillSwitch(audit_logger=log, latency_monitor=False)
    for _ in range(3):
        ks.add_stop_handler(lambda: None)
    lat = array("q", bytes(8 * n))
    pc = time.perf_counter_ns
    gc.disable()
    try:
        for i in range(n):
            t0 = pc()
            ks.emergency_stop(KillSwitchReason.MANUAL)
            lat[i] = pc() - t0
    finally:
        gc.enable()
        dropped = log.get_stats()["dropped_emergency"]
        log.close()
    s = sorted(lat)
    cells = " ".join(
        f"p{q * 100:g} {s[int(n * q)] / 1e3:.1f} us" for q in (0.5, 0.99, 0.999, 0.9997)
    )
    print(f"{n} stops: {cells}, max {s[-1] / 1e3:.1f} us; emergency records dropped: {dropped}")


if __name__ == "__main__":
    main()
