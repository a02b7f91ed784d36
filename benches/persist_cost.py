"""What "crash-proof before return" adds to a stop (issue 11 point 1): `emergency_stop` in
a warm loop with its in-file wait (the default: return only once the halt's records are in
the segment file) and with that wait patched out, rounds interleaved in one process.

    python benches/persist_cost.py
"""

import gc
import os
import shutil
import tempfile
import time

from killswitch_audit import AuditLogger, KillSwitch, KillSwitchReason, Scope


def _no_wait(timeout_s: float) -> bool:
    return True


def main() -> None:
    d = tempfile.mkdtemp()
    lg = AuditLogger(d, segment_size_mb=4)
    ks = KillSwitch(lg, latency_monitor=False, check_clock=False, join_control=False)
    ks.add_stop_handler(lambda: None, "noop")
    modes = {"with the in-file wait (default)": ks._persist, "wait patched out": _no_wait}
    res: dict[str, list[int]] = {k: [] for k in modes}
    pc = time.perf_counter_ns
    scope = Scope(account="A")
    gc.disable()
    for _round in range(20):
        for name, fn in modes.items():
            ks._persist = fn
            for _ in range(250):
                t0 = pc()
                ks.emergency_stop(KillSwitchReason.MANUAL, scope=scope)
                res[name].append(pc() - t0)
            time.sleep(0.01)
    gc.enable()
    print(f"load average {os.getloadavg()[0]:.1f}; warm emergency_stop, one no-op handler")
    for k, v in res.items():
        v.sort()
        n = len(v)
        p = [v[int(n * q)] / 1e3 for q in (0.5, 0.9, 0.99)]
        print(f"{k}: n={n} p50 {p[0]:.1f} us, p90 {p[1]:.1f} us, p99 {p[2]:.1f} us")
    print("kill-switch records dropped:", lg.get_stats()["dropped_emergency"])
    lg.close()
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
