"""`killswitch-audit bench`: the audit call next to its peers, side by side in one run.

Every peer does the same work per call: audit one kill-switch event with four integers
(reason 3, symbol 7, position 100, P&L -2,500,000 cents). The peers:

- ``floor``: ``_native.noop_audit`` - an empty PyO3 call with the same four arguments;
- ``native_kill_switch`` / ``native_trade``: ``AuditLogger.audit_kill_switch`` / ``audit_trade``;
- ``native_kill_switch_stalled``: ``audit_kill_switch`` with the main ring full (filled past
  120,000 records) and the flusher stalled (the ``_set_paused`` test hook);
- ``direct_kill_switch`` / ``direct_trade``: the same calls on the direct engine
  (``audit_system.engine: direct``: the call writes its record with ``pwrite`` itself);
- ``logging_queue``: stdlib ``QueueHandler`` -> ``QueueListener`` -> ``FileHandler``;
- ``os_write``: a synchronous ``os.write`` of each packed 64-byte record.

Per-call latency: single calls timed with ``time.perf_counter_ns``, in batches that take turns
between peers (so machine noise lands on all of them alike), the median cost of the timer
itself subtracted, the garbage collector off while timing. Percentiles p50, p99, p99.9,
p99.97 and max, and ratios against the floor. Throughput: a tight loop per peer, no timer
inside. Persist latency: a reader *process* polls the segment file's committed count through
its own mmap and timestamps each kill-switch record's arrival with CLOCK_MONOTONIC.

Run ``python -m killswitch_audit.bench --quick`` for a run of seconds.

Layout: timing.py (the shared arguments, percentiles and timing primitives), peers.py (the
peers' sinks), persist.py (persist latency and its reader process), stop.py (cold and warm
`emergency_stop`, idle CPU), sink.py (durability, writeback, drain rate, memory), runner.py
(one run and its `Report`), output.py (goals, Markdown, plot, JSON), main.py (`bench_main`,
the command's arguments). This package re-exports what callers import from
``killswitch_audit.bench``.
"""

from __future__ import annotations

from .main import bench_main
from .output import _fmt_ns, goals, markdown, plot, to_json
from .peers import _fill_main_ring, _Peers
from .persist import _READER, _thread_schedstat, persist_latency
from .runner import FULL, MAIN_FILL, QUICK, Report, Sizes, _throughputs, run
from .sink import (
    _rss_kib,
    _tlb_ipis,
    durability_probe,
    memory_growth,
    sink_drain_rate,
    writeback_probe,
)
from .stop import (
    _COLD_CHILD,
    _cpu_ns,
    _pct_dict,
    _spawn_cold,
    cold_stop,
    idle_cpu,
    idle_persist,
    warm_stop_loop,
)
from .timing import (
    ARGS,
    PERCENTILES,
    TRADE_ARGS,
    PeerResult,
    _subtract_sorted,
    _throughput,
    _time_calls,
    _time_empty,
    args_of,
    percentile,
    timer_overhead,
)

__all__ = [
    "ARGS",
    "FULL",
    "MAIN_FILL",
    "PERCENTILES",
    "QUICK",
    "TRADE_ARGS",
    "_COLD_CHILD",
    "_READER",
    "PeerResult",
    "Report",
    "Sizes",
    "_Peers",
    "_cpu_ns",
    "_fill_main_ring",
    "_fmt_ns",
    "_pct_dict",
    "_rss_kib",
    "_spawn_cold",
    "_subtract_sorted",
    "_thread_schedstat",
    "_throughput",
    "_throughputs",
    "_time_calls",
    "_time_empty",
    "_tlb_ipis",
    "args_of",
    "bench_main",
    "cold_stop",
    "durability_probe",
    "goals",
    "idle_cpu",
    "idle_persist",
    "markdown",
    "memory_growth",
    "percentile",
    "persist_latency",
    "plot",
    "run",
    "sink_drain_rate",
    "timer_overhead",
    "to_json",
    "warm_stop_loop",
    "writeback_probe",
]
