"""What every measurement shares: the four integers each peer audits, the nearest-rank
percentile, one peer's samples (`PeerResult`), and the timing primitives (single calls timed
with `perf_counter_ns` into a preallocated array, the timer's own cost, tight-loop
throughput).
"""

from __future__ import annotations

import math
import time
from array import array
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

ARGS = (3, 7, 100, -2_500_000)
"""The four integers every peer audits: reason, symbol, position size, P&L cents."""
TRADE_ARGS = (7, 100, 10_125, 1)
"""`audit_trade`'s four: symbol, quantity, price cents, order id."""

PERCENTILES = (50.0, 99.0, 99.9, 99.97)


@dataclass
class PeerResult:
    name: str
    what: str
    samples: array = field(default_factory=lambda: array("q"))
    throughput: Optional[float] = None
    note: str = ""

    def pct(self, p: float) -> float:
        return percentile(self.samples, p)


def percentile(sorted_or_not: Any, p: float) -> float:
    """Nearest-rank percentile of a sequence (sorted in place when it is an array)."""
    data = sorted_or_not
    n = len(data)
    if n == 0:
        return float("nan")
    k = min(n - 1, max(0, math.ceil(p / 100.0 * n) - 1))
    return float(data[k])


# ------------------------------------------------------------------------ timing primitives


def _time_calls(f: Callable[..., Any], n: int, out: array, args: tuple = ARGS) -> None:
    """Appends the duration (ns, timer included) of `n` single calls of `f(*args)` to `out`."""
    pc = time.perf_counter_ns
    a, b, c, d = args
    # Grow the array before timing: a realloc (mremap) inside the loop would send TLB
    # shootdown IPIs to the CPUs running this process's other threads, and wait for them.
    start = len(out)
    out.frombytes(bytes(8 * n))
    for i in range(start, start + n):
        t0 = pc()
        f(a, b, c, d)
        t1 = pc()
        out[i] = t1 - t0


def _time_empty(n: int, out: array) -> None:
    """The timer's own cost, measured in the same loop shape as `_time_calls`."""
    pc = time.perf_counter_ns
    start = len(out)
    out.frombytes(bytes(8 * n))
    for i in range(start, start + n):
        t0 = pc()
        t1 = pc()
        out[i] = t1 - t0


def timer_overhead(n: int = 200_000) -> int:
    """Median cost of the two `perf_counter_ns` reads around a call, in ns."""
    out = array("q")
    _time_empty(n, out)
    return int(percentile(sorted(out), 50.0))


def _subtract_sorted(raw: array, overhead: int) -> array:
    return array("q", sorted(max(0, v - overhead) for v in raw))


def _throughput(
    f: Callable[..., Any], seconds: float, args: tuple = ARGS, chunk: int = 10_000
) -> tuple[float, int]:
    """Calls per second of `f(*args)` in a tight loop for about `seconds`; and the call count."""
    a, b, c, d = args
    done = 0
    t_end = time.perf_counter() + seconds
    t0 = time.perf_counter_ns()
    while True:
        for _ in range(chunk):
            f(a, b, c, d)
        done += chunk
        if time.perf_counter() >= t_end:
            break
    return done * 1e9 / (time.perf_counter_ns() - t0), done


def args_of(name: str) -> tuple:
    """The four integers a peer is called with (trades have their own)."""
    return TRADE_ARGS if name.endswith("_trade") else ARGS
