"""A run's report as output: the DESIGN.md goals it measures (`goals`), the Markdown tables
(`markdown`), the percentile plot (`plot`, needs matplotlib) and the JSON numbers (`to_json`).
"""

from __future__ import annotations

from typing import Any

from .runner import Report
from .timing import PERCENTILES


def _fmt_ns(v: float) -> str:
    if v != v:  # NaN
        return "-"
    if v >= 1_000_000:
        return f"{v / 1e6:.1f} ms"
    if v >= 10_000:
        return f"{v / 1e3:.0f} µs"
    if v >= 1_000:
        return f"{v / 1e3:.2f} µs"
    return f"{v:.0f} ns"


def goals(rep: Report) -> list[tuple[str, str, str, bool]]:
    """(goal, target, measured, met) for the DESIGN.md numbers this run measures."""
    out: list[tuple[str, str, str, bool]] = []
    floor = rep.get("floor")
    ks = rep.get("native_kill_switch")
    st = rep.get("native_kill_switch_stalled")
    tr = rep.get("native_trade")
    if floor and ks:
        ratio = ks.pct(50) / max(floor.pct(50), 1.0)
        out.append(
            (
                "`audit_kill_switch` p50 vs empty PyO3 call",
                "<= 2x",
                f"{ratio:.2f}x ({_fmt_ns(ks.pct(50))} vs {_fmt_ns(floor.pct(50))})",
                ratio <= 2.0,
            )
        )
        v = ks.pct(99.97)
        out.append(("`audit_kill_switch` p99.97", "< 1 µs", _fmt_ns(v), v < 1000))
    if st and rep.stalled_stats:
        base = rep.stalled_stats["unloaded_p99_97_ns"]
        ratio = st.pct(99.97) / max(base, 1.0)
        out.append(
            (
                "p99.97, main ring full + sink stalled, vs unloaded",
                "<= 1.25x",
                f"{ratio:.2f}x ({_fmt_ns(st.pct(99.97))} vs {_fmt_ns(base)})",
                ratio <= 1.25,
            )
        )
    if tr and tr.throughput:
        # Records that reach the file: calls/s times the share not dropped by the ring.
        accepted = tr.throughput * (1.0 - rep.trade_tp_drop_share)
        out.append(
            (
                "one Python thread, `audit_trade` records/s into the file",
                ">= 5 M/s",
                f"{accepted / 1e6:.2f} M/s ({tr.throughput / 1e6:.2f} M calls/s, "
                f"{rep.trade_tp_drop_share:.0%} dropped)",
                accepted >= 5e6,
            )
        )
    if rep.sink:
        k = rep.sink
        out.append(
            (
                "sink drain, end to end (full 4 M main ring, segment rolls included)",
                ">= 20 M records/s",
                f"{k['records_per_s'] / 1e6:.2f} M/s ({k['records']:,} in {k['seconds']:.2f} s, "
                f"{k['segments']} segments)",
                k["records_per_s"] >= 20e6,
            )
        )
    if rep.persist:
        p = rep.persist
        out.append(
            (
                "kill-switch record visible to another process, p99",
                "< 200 µs",
                f"{_fmt_ns(p['p99_ns'])} (p50 {_fmt_ns(p['p50_ns'])}, {p['missing']} missing)",
                p["p99_ns"] < 200_000 and p["missing"] == 0,
            )
        )
    if rep.cold:
        c = rep.cold
        v = c["call_ns"]["p90_ns"]
        out.append(
            (
                f"first `emergency_stop` after 1 s idle, {c['processes']} fresh processes, p90",
                "<= 50 µs",
                f"{_fmt_ns(v)} (handlers done p90 {_fmt_ns(c['handlers_done_ns']['p90_ns'])}; "
                f"cold empty call p90 {_fmt_ns(c['empty_ns']['p90_ns'])})",
                v <= 50_000,
            )
        )
        v = c["block_ns"]["p90_ns"]
        out.append(("first stop: trigger -> gate closed, p90", "<= 5 µs", _fmt_ns(v), v <= 5_000))
    if rep.idle:
        v = rep.idle["max_share"]
        out.append(
            (
                "idle process (logger + monitor + kill switch), CPU",
                "< 1% of a core",
                f"{v:.2%} (worst of {rep.idle['processes']}, {rep.idle['seconds']:g} s)",
                v < 0.01,
            )
        )
    if rep.memory:
        m = rep.memory
        out.append(
            (
                f"anonymous memory growth over {m['records']:,} records",
                "none (fixed after start)",
                f"{m['rss_anon_growth_kib']:+d} KiB",
                m["rss_anon_growth_kib"] < 1024,
            )
        )
    return out


def markdown(rep: Report) -> str:
    floor = rep.get("floor")
    f50 = floor.pct(50) if floor else float("nan")
    f9997 = floor.pct(99.97) if floor else float("nan")
    lines = [
        f"Per call, {rep.sizes.rounds} rounds x {rep.sizes.batch:,} calls per peer "
        f"(stalled: {rep.sizes.stalled_rounds} x {rep.sizes.stalled_batch:,}); "
        f"timer overhead {rep.overhead_ns} ns subtracted; GC off while timing.",
        "",
        "| peer | p50 | p99 | p99.9 | p99.97 | max | calls/s (tight loop) "
        "| p50 / floor | p99.97 / floor |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in rep.peers:
        tp = f"{p.throughput / 1e6:.2f} M" if p.throughput else "-"
        cells = [_fmt_ns(p.pct(q)) for q in PERCENTILES]
        mx = _fmt_ns(float(p.samples[-1])) if len(p.samples) else "-"
        r50 = p.pct(50) / max(f50, 1.0)
        r9997 = p.pct(99.97) / max(f9997, 1.0)
        lines.append(
            f"| {p.name} | {' | '.join(cells)} | {mx} | {tp} | {r50:.2f}x | {r9997:.2f}x |"
        )
    lines.append("")
    for p in rep.peers:
        lines.append(f"- `{p.name}`: {p.what}{'; ' + p.note if p.note else ''}")
    lines += ["", "| goal (DESIGN.md) | target | measured | met |", "|---|---|---|---|"]
    for g, target, measured, met in goals(rep):
        lines.append(f"| {g} | {target} | {measured} | {'met' if met else '**missed**'} |")
    if rep.stalled_stats:
        s = rep.stalled_stats
        lines += [
            "",
            f"Stalled logger after the run: {s['dropped_main']:,} main-ring records dropped "
            f"(counted, GAP-recorded), {s['dropped_emergency']} kill-switch records dropped.",
        ]
    if rep.persist:
        p = rep.persist
        lines.append(
            f"Persist latency: {p['seen']} kill-switch records, p50 {_fmt_ns(p['p50_ns'])}, "
            f"p99 {_fmt_ns(p['p99_ns'])}, max {_fmt_ns(p['max_ns'])}; the flusher thread "
            f"waited {_fmt_ns(p['flusher_runqueue_wait_ns_per_wakeup'])} per wakeup for a CPU "
            "(run queue, /proc schedstat)."
        )
    if rep.writeback:
        lines += [
            "",
            "Writeback probe: the empty PyO3 call timed on a pinned thread while a logger of the "
            "same process writes to the directory (TLB-shootdown IPIs received by that CPU):",
            "",
            "| log directory | records written | TLB IPIs on caller's CPU | floor p99 | "
            "p99.9 | p99.97 | samples > 2 µs |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for w in rep.writeback:
            lines.append(
                f"| `{w['directory']}` | {w['records']:,} | {w['tlb_ipis_on_caller_cpu']} | "
                f"{_fmt_ns(w['floor_p99_ns'])} | {_fmt_ns(w['floor_p99_9_ns'])} | "
                f"{_fmt_ns(w['floor_p99_97_ns'])} | {w['samples_over_2us']:,} of "
                f"{w['samples']:,} |"
            )
        lines.append("")
    if rep.durability:
        lines += [
            "",
            "Durability probe: `audit_kill_switch` and the empty call, interleaved in one "
            "process, with `durable_kill_switch` on (an fdatasync after each kill switch, on "
            "the syncer thread) and off (timer included, ~50 ns):",
            "",
            "| log directory | durable | fdatasyncs | floor p99.9 | floor p99.97 | "
            "kill switch p99.9 | kill switch p99.97 |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for w in rep.durability:
            for key, label in (("durable", "yes"), ("not_durable", "no")):
                v = w[key]
                lines.append(
                    f"| `{w['directory']}` | {label} | {v['syncs']:,} | "
                    f"{_fmt_ns(v['floor_p99_9_ns'])} | {_fmt_ns(v['floor_p99_97_ns'])} | "
                    f"{_fmt_ns(v['ks_p99_9_ns'])} | {_fmt_ns(v['ks_p99_97_ns'])} |"
                )
        lines.append("")
    if rep.memory:
        m = rep.memory
        lines.append(
            f"Memory: RssAnon {m['rss_anon_before_kib']:,} -> {m['rss_anon_after_kib']:,} KiB over "
            f"{m['records']:,} records ({m['dropped']:,} dropped, {m['segments']} segments; "
            f"mapped segment pages, RssFile {m['rss_file_after_kib']:,} KiB, are the page cache)."
        )
    lines.append(f"Run took {rep.wall_s:.1f} s.")
    return "\n".join(lines) + "\n"


def plot(rep: Report, path: str) -> None:
    """Latency by percentile, log-log, one line per peer (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    qs = [50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.97, 99.99, 99.995]
    xs = [1.0 / (1.0 - q / 100.0) for q in qs]
    for p in rep.peers:
        if len(p.samples) == 0:
            continue
        ax.plot(xs, [max(p.pct(q), 1.0) for q in qs], marker="o", ms=3, label=p.name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"p{q:g}" for q in qs], rotation=45)
    ax.set_ylabel("latency per call (ns, timer overhead subtracted)")
    ax.set_title("killswitch-audit: per-call latency by percentile, same run")
    ax.axhline(1000, color="grey", lw=0.8, ls="--")
    ax.text(xs[0], 1100, "1 µs", color="grey", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def to_json(rep: Report) -> dict:
    out: dict[str, Any] = {
        "overhead_ns": rep.overhead_ns,
        "peers": {
            p.name: {
                **{f"p{q:g}": p.pct(q) for q in PERCENTILES},
                "max": float(p.samples[-1]) if len(p.samples) else None,
                "n": len(p.samples),
                "throughput": p.throughput,
            }
            for p in rep.peers
        },
        "goals": [{"goal": g, "target": t, "measured": m, "met": ok} for g, t, m, ok in goals(rep)],
        "stalled_stats": rep.stalled_stats,
        "memory": rep.memory,
        "writeback": rep.writeback,
        "durability": rep.durability,
        "sink": rep.sink,
    }
    if rep.persist:
        out["persist"] = {k: v for k, v in rep.persist.items() if k != "latencies"}
    out["cold"] = rep.cold
    out["idle"] = rep.idle
    return out
