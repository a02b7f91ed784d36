"""The shapes of the dicts the package hands to users, as `TypedDict`s for type checkers.

At run time they are plain dicts; these classes only name their keys and value types:
`AuditStats` (`AuditLogger.get_stats()`), `LatencyAnalysis` and `KillSwitchAnalysis`
(`LatencyMonitor.get_analysis()` and `get_kill_switch_analysis()`), `KillSwitchStats`
(`KillSwitch.stats()`) and `ClockEvidence` (`KillSwitch.check_clock()`, `KillSwitch.clock`).
Only typing is imported here, so any module (and the `_native` stub) can use them.
"""

from __future__ import annotations

from typing import Literal, Optional, TypedDict

__all__ = [
    "AuditStats",
    "ClockEvidence",
    "KillSwitchAnalysis",
    "KillSwitchStats",
    "LatencyAnalysis",
    "NativeAnalysis",
    "PerformanceStatus",
]


class _AuditStatsCommon(TypedDict):
    records_written: int
    records_flushed: int
    dropped_main: int
    dropped_emergency: int
    main_ring_len: int
    main_ring_capacity: int
    #: main_ring_len / main_ring_capacity, 0..1
    main_ring_fill: float
    emergency_ring_len: int
    emergency_ring_capacity: int
    emergency_ring_fill: float
    flushes: int
    bytes_written: int
    segments: int
    sink_errors: int
    durable_syncs: int
    last_seq: int
    #: from the latest CLOCK record: 0 synchronised, 1 not, 2 unknown
    clock_state: int
    seq_unreserved: int
    #: "rings" (the default engine) or "direct" (the synchronous rollback engine)
    engine: str


class AuditStats(_AuditStatsCommon, total=False):
    """`AuditLogger.get_stats()`. The flusher counters exist only with the ring engine (the
    direct engine has no flusher thread)."""

    flusher_parks: int
    flusher_wakes: int


class NativeAnalysis(TypedDict):
    """The latency summary the native monitor computes (all latencies in µs)."""

    count: int
    mean_latency_us: float
    min_latency_us: float
    p50_latency_us: float
    p90_latency_us: float
    p99_latency_us: float
    p99_9_latency_us: float
    p99_97_latency_us: float
    p99_99_latency_us: float
    max_latency_us: float
    sum_latency_us: float
    #: records above the breach threshold
    breaches: int
    #: records above the histogram's range (60 s), recorded as 60 s
    clamped: int


PerformanceStatus = Literal["OK", "DEGRADED", "BREACH"]


class LatencyAnalysis(NativeAnalysis):
    """`LatencyMonitor.get_analysis(operation, window)`: the native summary, the operation and
    window it covers, its target (None: no target) and the verdict against it."""

    operation: str
    window: bool
    target_us: Optional[float]
    performance_status: PerformanceStatus


class KillSwitchAnalysis(LatencyAnalysis):
    """`LatencyMonitor.get_kill_switch_analysis(window)`: every kill-switch operation merged
    (`operation` is "kill_switch"; `operations` names them)."""

    operations: list[str]


class KillSwitchStats(TypedDict):
    """`KillSwitch.stats()`."""

    stops: int
    denials: int
    handler_failures: int
    trigger_failures: int
    audit_failures: int
    #: reason text -> times an unknown reason was given
    unknown_reasons: dict[str, int]
    #: Scope.text -> TradingState name, for every restricted scope
    restricted: dict[str, str]


class ClockEvidence(TypedDict):
    """`KillSwitch.check_clock()` and `KillSwitch.clock`: what the kernel says of the clock."""

    state: Literal["synchronised", "unsynchronised", "unknown"]
    est_error_us: Optional[int]
    max_error_us: Optional[int]
    status_bits: Optional[int]
    ok: bool
    message: str
