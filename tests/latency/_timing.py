"""Helpers of the latency suite: per-call timing the way `killswitch-audit bench` does it.

Single calls are timed with `time.perf_counter_ns`, in batches that alternate between the
things compared (so machine noise lands on both), with the garbage collector off. Ratios
within one run are asserted; absolute ceilings are only loose enough never to flake on a busy
2-core machine. Every test prints its real numbers (`pytest -s` shows them).
"""

from __future__ import annotations

import gc
import os
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

from killswitch_audit.bench import _time_calls, percentile


@contextmanager
def gc_off() -> Iterator[None]:
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class Timings:
    """Raw per-call samples (timer included) of one operation."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.raw = array("q")
        self._sorted: list[int] | None = None

    def time(self, f: Callable[..., Any], n: int, args: tuple) -> None:
        _time_calls(f, n, self.raw, args)
        self._sorted = None

    def pct(self, p: float, overhead: int = 0) -> float:
        if self._sorted is None:
            self._sorted = sorted(self.raw)
        return max(0.0, percentile(self._sorted, p) - overhead)

    def line(self, overhead: int) -> str:
        ps = ", ".join(f"p{q:g} {self.pct(q, overhead):,.0f}" for q in (50, 99, 99.9, 99.97))
        return f"{self.name}: {ps}, max {self.pct(100, overhead):,.0f} ns (n={len(self.raw):,})"


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0
