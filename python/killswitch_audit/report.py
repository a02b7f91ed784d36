"""``killswitch-audit report FILE.hlog [--plot out.png]``: percentile table and chart of an
HdrHistogram interval log.

The log is decoded here in pure Python (base64 + zlib + the V2 encoding), so no runtime
dependency is added: the ``hdrhistogram`` PyPI package is only a test peer. Histograms with the
same tag (operation) are merged; values are nanoseconds (what `LatencyMonitor.write_hlog` writes)
and are shown in µs.

`plot_percentiles` draws the classic HdrHistogram percentile-distribution chart (latency against
percentile on a 1/(1-p) log axis) with target lines; it needs matplotlib (the ``plot`` extra).
"""

from __future__ import annotations

import argparse
import base64
import math
import struct
import sys
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TextIO, Union

__all__ = [
    "REPORT_PERCENTILES",
    "HlogError",
    "HlogHistogram",
    "distribution",
    "plot_percentiles",
    "read_hlog",
    "report_main",
]

_V2_COOKIE = 0x1C849303 | 0x10
_V2_COMPRESSED_COOKIE = 0x1C849304 | 0x10

#: Percentiles printed by the report (in percent).
REPORT_PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.97, 99.99)


class HlogError(ValueError):
    """An interval log line or histogram payload cannot be decoded."""


@dataclass
class HlogHistogram:
    """A decoded HdrHistogram: the bucket layout and the counts (index -> count)."""

    lowest: int
    highest: int
    sigfig: int
    counts: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.sigfig <= 5 or self.lowest < 1 or self.highest < 2 * self.lowest:
            raise HlogError(
                f"invalid histogram parameters lowest={self.lowest} highest={self.highest} "
                f"sigfig={self.sigfig}"
            )
        largest = 2 * 10**self.sigfig
        self._sub_bucket_count = 1 << max(0, math.ceil(math.log2(largest)))
        self._half_mag = self._sub_bucket_count.bit_length() - 2  # log2(count) - 1
        self._half = self._sub_bucket_count // 2
        self._unit_mag = self.lowest.bit_length() - 1

    # -- HdrHistogram index arithmetic (same as the Java/Rust implementations)
    def _bucket(self, index: int) -> tuple[int, int]:
        bucket = (index >> self._half_mag) - 1
        sub = (index & (self._half - 1)) + self._half
        if bucket < 0:
            sub -= self._half
            bucket = 0
        return bucket, sub

    def value_at_index(self, index: int) -> int:
        """Lowest value counted at ``index``."""
        bucket, sub = self._bucket(index)
        return sub << (bucket + self._unit_mag)

    def highest_equivalent_at_index(self, index: int) -> int:
        """Highest value counted at ``index``."""
        bucket, sub = self._bucket(index)
        return (sub << (bucket + self._unit_mag)) + (1 << (bucket + self._unit_mag)) - 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, other: HlogHistogram) -> None:
        """Merge ``other`` (same layout: lowest and sigfig) into this histogram."""
        if (other.lowest, other.sigfig) != (self.lowest, self.sigfig):
            raise HlogError("cannot merge histograms with different lowest value or precision")
        for i, c in other.counts.items():
            self.counts[i] = self.counts.get(i, 0) + c
        self.highest = max(self.highest, other.highest)

    def value_at_percentile(self, percentile: float) -> int:
        """The HdrHistogram value at ``percentile`` (0..100): the highest equivalent value of
        the bucket where the cumulative count reaches ceil(p/100 * total)."""
        total = self.total
        if total == 0:
            return 0
        target = max(1, math.ceil(min(percentile, 100.0) / 100.0 * total))
        running = 0
        for i in sorted(self.counts):
            running += self.counts[i]
            if running >= target:
                return self.highest_equivalent_at_index(i)
        return self.highest_equivalent_at_index(max(self.counts))

    def max(self) -> int:
        return self.highest_equivalent_at_index(max(self.counts)) if self.counts else 0

    def min(self) -> int:
        return self.value_at_index(min(self.counts)) if self.counts else 0

    def mean(self) -> float:
        """Mean using each bucket's middle value (as HdrHistogram does)."""
        total = self.total
        if total == 0:
            return 0.0
        acc = 0.0
        for i, c in self.counts.items():
            lo = self.value_at_index(i)
            hi = self.highest_equivalent_at_index(i)
            acc += c * (lo + hi) / 2.0
        return acc / total


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """HdrHistogram's LEB128 variant: at most 9 bytes, the 9th contributes all 8 bits."""
    value = 0
    for k in range(8):
        if pos >= len(buf):
            raise HlogError("truncated varint in histogram payload")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << (7 * k)
        if not b & 0x80:
            return value, pos
    if pos >= len(buf):
        raise HlogError("truncated varint in histogram payload")
    value |= buf[pos] << 56
    return value, pos + 1


def decode_histogram(encoded: Union[str, bytes]) -> HlogHistogram:
    """Decode one base64 V2 (optionally deflate-compressed) histogram."""
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (ValueError, TypeError) as e:
        raise HlogError(f"bad base64 histogram: {e}") from None
    if len(raw) < 8:
        raise HlogError("histogram payload too short")
    cookie, length = struct.unpack(">II", raw[:8])
    if cookie == _V2_COMPRESSED_COOKIE:
        try:
            raw = zlib.decompress(raw[8 : 8 + length])
        except zlib.error as e:
            raise HlogError(f"bad deflate stream: {e}") from None
        if len(raw) < 8:
            raise HlogError("compressed histogram payload too short")
        cookie, length = struct.unpack(">II", raw[:8])
    if cookie != _V2_COOKIE:
        raise HlogError(f"unsupported histogram encoding cookie 0x{cookie:08x}")
    if len(raw) < 40:
        raise HlogError("histogram header too short")
    offset, sigfig, lowest, highest, ratio = struct.unpack(">IIQQd", raw[8:40])
    if offset != 0:
        raise HlogError("normalizing index offset is not supported")
    if ratio != 1.0:
        raise HlogError("integer-to-double conversion ratio != 1 is not supported")
    payload = raw[40 : 40 + length]
    if len(payload) != length:
        raise HlogError("histogram payload truncated")
    h = HlogHistogram(lowest, highest, sigfig)
    pos = 0
    index = 0
    counts = h.counts
    while pos < len(payload):
        zz, pos = _varint(payload, pos)
        n = (zz >> 1) ^ -(zz & 1)
        if n < 0:
            index += -n
        else:
            if n:
                counts[index] = counts.get(index, 0) + n
            index += 1
    return h


def read_hlog(path: Union[str, Path]) -> dict[str, HlogHistogram]:
    """Read an interval log and merge its intervals per tag (untagged: ``""``), in first-seen
    order."""
    result: dict[str, HlogHistogram] = {}
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise HlogError(
            f"{p}: not an HdrHistogram interval log (binary data at byte {e.start}; "
            "expected the text written by LatencyMonitor.write_hlog)"
        ) from None
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#") or line.startswith('"'):
            continue
        tag = ""
        if line.startswith("Tag="):
            tag, _, line = line[4:].partition(",")
        parts = line.split(",", 3)
        if len(parts) != 4:
            raise HlogError(f"{p}: line {lineno}: not an interval line")
        try:
            h = decode_histogram(parts[3])
        except HlogError as e:
            raise HlogError(f"{p}: line {lineno}: {e}") from None
        if tag in result:
            result[tag].add(h)
        else:
            result[tag] = h
    return result


def distribution(h: HlogHistogram, scale: float = 1e-3) -> list[tuple[float, float]]:
    """(percentile, value * scale) points for the percentile-distribution chart: the classic
    HdrHistogram ticks (5 per halving of the remaining tail) up to the last recorded value."""
    total = h.total
    if total == 0:
        return []
    points: list[tuple[float, float]] = []
    k = 0
    limit = 1.0 - 1.0 / total
    while True:
        p = 1.0 - 0.5 ** (k / 5.0)
        if p > limit:
            break
        points.append((p * 100.0, h.value_at_percentile(p * 100.0) * scale))
        k += 1
    points.append((limit * 100.0 if total > 1 else 0.0, h.max() * scale))
    return points


def plot_percentiles(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: Union[str, Path],
    targets: Optional[Mapping[str, float]] = None,
    title: str = "Latency by percentile distribution",
) -> Path:
    """Write the percentile-distribution chart to ``path``.

    ``series``: name -> [(percentile in percent, latency in µs)]; ``targets``: label -> µs,
    drawn as horizontal dashed lines. Needs matplotlib (``pip install 'killswitch-audit[plot]'``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedLocator, NullLocator
    except ImportError as e:
        raise ImportError("plotting needs matplotlib: pip install 'killswitch-audit[plot]'") from e
    fig, ax = plt.subplots(figsize=(9, 5.5))
    max_x = draw_percentiles(ax, series, targets)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks, labels = [], []
    for pct in (0.0, 90.0, 99.0, 99.9, 99.97, 99.99, 99.999, 99.9999):
        x = 1.0 / (1.0 - pct / 100.0)
        if x <= max_x * 1.5:
            ticks.append(x)
            labels.append(f"{pct:g}%")
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels(labels)
    ax.set_xlim(0.9, max_x * 1.5)  # a single sample sits at x = 1: keep its marker whole
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (µs)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    out = Path(path)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def draw_percentiles(
    ax: Any,
    series: Mapping[str, Sequence[tuple[float, float]]],
    targets: Optional[Mapping[str, float]] = None,
) -> float:
    """Draw the series and target lines on a matplotlib Axes; returns the largest x.

    A series with fewer than three distinct percentiles (one or two samples) is drawn with
    markers, or it would be an invisible zero-length line. A target whose label starts with a
    series' name (``"emergency_stop target"``) takes that series' colour; other targets
    (thresholds shared by all operations) take colours no series uses."""
    max_x = 10.0
    used: dict[str, str] = {}
    for name, pts in series.items():
        xs, ys = [], []
        for pct, us in pts:
            frac = min(pct / 100.0, 1.0 - 1e-9)
            xs.append(1.0 / (1.0 - frac))
            ys.append(us)
        if xs:
            max_x = max(max_x, max(xs))
            few = len(set(xs)) < 3
            (line,) = ax.plot(
                xs, ys, label=name, linewidth=1.6, marker="o" if few else None, markersize=6
            )
            used[name] = line.get_color()
    spare = [c for c in _TARGET_COLORS if c not in used.values()] or _TARGET_COLORS
    i = 0
    for label, us in (targets or {}).items():
        owner = next((n for n in used if label == n or label.startswith(n + " ")), None)
        if owner is not None:
            color = used[owner]
        else:
            color = spare[i % len(spare)]
            i += 1
        ax.axhline(us, linestyle="--", linewidth=1, color=color, label=f"{label} ({us:g} µs)")
    return max_x


_TARGET_COLORS = ["tab:gray", "black", "tab:olive", "tab:cyan", "tab:pink"]


def _default_targets() -> dict[str, float]:
    try:
        from .config import load_config

        perf = load_config().performance
    except Exception:  # a bad $KILLSWITCH_AUDIT_CONFIG must not stop a report
        return {"kill-switch p99.97 target": 10.0, "breach threshold": 20.0}
    t = perf.target_latencies
    return {
        "kill_switch_audit target": float(t.kill_switch_audit),
        "emergency_stop target": float(t.emergency_stop),
        "kill-switch p99.97 regression target": float(perf.alerts.regression_target_p99_97),
        "breach threshold": float(perf.alerts.latency_breach_threshold),
    }


def format_table(hists: Mapping[str, HlogHistogram], out: TextIO) -> None:
    """Print the percentile table (µs) of each tag."""
    cols = ["count", "mean", *[f"p{p:g}" for p in REPORT_PERCENTILES], "max"]
    name_w = max([len("operation"), *(len(n or "(untagged)") for n in hists)])
    out.write(f"{'operation':<{name_w}}  " + "  ".join(f"{c:>10}" for c in cols) + "\n")
    out.write(
        f"{'':<{name_w}}  "
        + "  ".join(f"{'':>10}" if c == "count" else f"{'(us)':>10}" for c in cols)
        + "\n"
    )
    for name, h in hists.items():
        vals = [h.mean(), *(h.value_at_percentile(p) for p in REPORT_PERCENTILES), h.max()]
        cells = [f"{h.total:>10}"] + [f"{v / 1e3:>10.3f}" for v in vals]
        out.write(f"{name or '(untagged)':<{name_w}}  " + "  ".join(cells) + "\n")


def report_main(argv: Optional[Iterable[str]] = None) -> int:
    """Entry point of ``killswitch-audit report``: 0 ok, 1 unreadable log or plot failure,
    2 usage error."""
    parser = argparse.ArgumentParser(
        prog="killswitch-audit report",
        description="Percentile table (and chart) of an HdrHistogram interval log.",
    )
    parser.add_argument("file", help="interval log (.hlog) written by LatencyMonitor.write_hlog")
    parser.add_argument("--plot", metavar="OUT.png", help="write the percentile chart (matplotlib)")
    parser.add_argument("--tag", action="append", help="only these operations (repeatable)")
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        hists = read_hlog(args.file)
    except (OSError, UnicodeDecodeError, HlogError) as e:
        sys.stderr.write(f"killswitch-audit report: {e}\n")
        return 1
    if args.tag:
        hists = {k: v for k, v in hists.items() if k in set(args.tag)}
    if not hists:
        sys.stderr.write(f"killswitch-audit report: {args.file}: no histograms\n")
        return 1
    format_table(hists, sys.stdout)
    if args.plot:
        try:
            out = plot_percentiles(
                {name or "(untagged)": distribution(h) for name, h in hists.items()},
                args.plot,
                _default_targets(),
                title=f"Latency by percentile distribution: {Path(args.file).name}",
            )
        except (ImportError, OSError, ValueError) as e:
            sys.stderr.write(f"killswitch-audit report: {e}\n")
            return 1
        sys.stdout.write(f"plot written to {out}\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(report_main())
