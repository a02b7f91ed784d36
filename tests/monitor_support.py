"""Helpers shared by the latency-monitor tests (test_monitor_*.py)."""

from __future__ import annotations

from typing import Any

from killswitch_audit.config import AuditConfig
from killswitch_audit.monitor import (
    LatencyMonitor,
)

HDR_RELATIVE_ERROR = 1e-3  # 3 significant digits: a bucket is at most 1/1024 of its value wide


def make_monitor(tick_s: float = 0.01, **perf: Any) -> LatencyMonitor:
    alerts = {
        k: perf.pop(k)
        for k in list(perf)
        if k
        in (
            "latency_breach_threshold",
            "regression_target_p99_97",
            "buffer_pressure_threshold",
            "rate_limit_s",
        )
    }
    cfg = AuditConfig.from_dict({"performance": {"alerts": alerts, **perf}})
    return LatencyMonitor(cfg, tick_s=tick_s)
