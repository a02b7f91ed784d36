//! Exports of the monitor's histograms: an HdrHistogram interval log ([`Monitor::write_hlog`])
//! and the Prometheus text exposition ([`Monitor::prometheus_text`]).
use std::fmt::Write as _;
use std::io;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;

use super::alerts::ALERT_KINDS;
use super::recorder::{accumulating_histogram, Counters};
use super::window::window_into;
use super::{Analysis, Monitor, QUANTILES, RING_NAMES};

impl Monitor {
    /// Writes an HdrHistogram interval log (V2 deflate-compressed histograms, one line per
    /// histogram tagged `Tag=<operation>`; characters the format forbids in a tag become `_`).
    ///
    /// With `window == false` each operation contributes one interval: its since-start
    /// histogram, from the monitor's start until now. With `window == true` it contributes its
    /// retained completed intervals and the current one, in time order. Timestamps are relative
    /// to the `#[BaseTime: ...]` header (the monitor's start); values are ns and the max column
    /// is in ms (`MaxValueDivisor` 1e6), as Java's HistogramLogProcessor expects.
    pub fn write_hlog<W: io::Write>(&self, out: &mut W, window: bool) -> io::Result<()> {
        let base = self.inner.start_wall;
        let mut serializer = V2DeflateSerializer::new();
        let mut builder = IntervalLogWriterBuilder::new();
        builder
            .add_comment("killswitch-audit latency monitor: values in nanoseconds")
            .add_comment("[Histogram log format version 1.3]")
            .with_start_time(base)
            .with_base_time(base)
            .with_max_value_divisor(1e6);
        let mut writer = builder.begin_log_with(out, &mut serializer)?;
        writer.write_comment(
            "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"",
        )?;
        let rel = |t: SystemTime| t.duration_since(base).unwrap_or_default();
        let now = Instant::now();
        let mut lines: Vec<(Duration, Duration, String, Histogram<u64>)> = Vec::new();
        for op in self.ops_sorted() {
            let tag: String = op
                .name
                .chars()
                .map(|c| {
                    if matches!(c, ',' | '\r' | '\n' | ' ') {
                        '_'
                    } else {
                        c
                    }
                })
                .collect();
            let acc = op.collect_and_rotate(self.step(), now);
            if window {
                for slot in acc.ring.iter() {
                    if now.saturating_duration_since(slot.end_instant) >= self.inner.config.window {
                        continue;
                    }
                    let start = rel(slot.start);
                    let len = slot.end.duration_since(slot.start).unwrap_or_default();
                    lines.push((start, len, tag.clone(), slot.hist.clone()));
                }
                let start = rel(acc.interval_start);
                let len = SystemTime::now()
                    .duration_since(acc.interval_start)
                    .unwrap_or_default();
                lines.push((start, len, tag, acc.interval.clone()));
            } else {
                let len = SystemTime::now().duration_since(base).unwrap_or_default();
                lines.push((Duration::ZERO, len, tag, acc.total.clone()));
            }
        }
        lines.sort_by_key(|l| l.0);
        for (start, len, tag, h) in &lines {
            writer
                .write_histogram(h, *start, *len, Tag::new(tag))
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        Ok(())
    }

    /// Prometheus text exposition (format 0.0.4).
    ///
    /// - `killswitch_audit_latency_seconds{operation=...,quantile=...}`: a summary; the
    ///   quantiles (0.5 .. 0.9999, including 0.9997) are over the rolling window, `_count` and
    ///   `_sum` since start (monotonic, as Prometheus expects).
    /// - `killswitch_audit_latency_max_seconds{operation}` (gauge, window),
    ///   `killswitch_audit_latency_breaches_total{operation}`,
    ///   `killswitch_audit_latency_clamped_total{operation}` (counters, since start).
    /// - `killswitch_audit_alerts_total{kind}`, `killswitch_audit_alerts_dropped_total`.
    /// - With a probe attached: `killswitch_audit_ring_fill_ratio{ring}` (gauge) and
    ///   `killswitch_audit_ring_dropped_total{ring}` (counter).
    pub fn prometheus_text(&self) -> String {
        let mut s = String::new();
        let now = Instant::now();
        struct Row {
            name: String,
            q: [u64; QUANTILES.len()],
            wmax: u64,
            count: u64,
            total: Counters,
        }
        let rows: Vec<Row> = self
            .ops_sorted()
            .into_iter()
            .map(|op| {
                let acc = op.collect_and_rotate(self.step(), now);
                let mut w = accumulating_histogram();
                window_into(&acc, self.inner.config.window, now, &mut w);
                let a = Analysis::from_parts(&w, Counters::default());
                Row {
                    name: escape_label(&op.name),
                    q: a.quantiles_ns,
                    wmax: a.max_ns,
                    count: acc.total.len(),
                    total: acc.total_counters,
                }
            })
            .collect();
        let _ = writeln!(
            s,
            "# HELP killswitch_audit_latency_seconds Operation latency: quantiles over the rolling window, count and sum since start."
        );
        let _ = writeln!(s, "# TYPE killswitch_audit_latency_seconds summary");
        for r in &rows {
            for (q, v) in QUANTILES.iter().zip(r.q.iter()) {
                let _ = writeln!(
                    s,
                    "killswitch_audit_latency_seconds{{operation=\"{}\",quantile=\"{}\"}} {}",
                    r.name,
                    q,
                    Secs(*v)
                );
            }
            let _ = writeln!(
                s,
                "killswitch_audit_latency_seconds_sum{{operation=\"{}\"}} {}",
                r.name,
                Secs(r.total.sum)
            );
            let _ = writeln!(
                s,
                "killswitch_audit_latency_seconds_count{{operation=\"{}\"}} {}",
                r.name, r.count
            );
        }
        family(
            &mut s,
            "killswitch_audit_latency_max_seconds",
            "Largest latency in the rolling window.",
            "gauge",
            "operation",
            rows.iter().map(|r| (&r.name, Secs(r.wmax))),
        );
        family(
            &mut s,
            "killswitch_audit_latency_breaches_total",
            "Records above the latency breach threshold since start.",
            "counter",
            "operation",
            rows.iter().map(|r| (&r.name, r.total.breaches)),
        );
        family(
            &mut s,
            "killswitch_audit_latency_clamped_total",
            "Records above the histogram range (60 s), recorded as 60 s.",
            "counter",
            "operation",
            rows.iter().map(|r| (&r.name, r.total.clamped)),
        );
        family(
            &mut s,
            "killswitch_audit_latency_breach_threshold_seconds",
            "Latency breach threshold.",
            "gauge",
            "",
            [("", Secs(self.inner.config.breach_threshold_ns))],
        );
        let raised = self.alerts_raised();
        family(
            &mut s,
            "killswitch_audit_alerts_total",
            "Alerts raised, by kind.",
            "counter",
            "kind",
            ALERT_KINDS.iter().map(|k| (k.as_str(), raised[k.index()])),
        );
        family(
            &mut s,
            "killswitch_audit_alerts_dropped_total",
            "Alerts lost because the delivery queue was full.",
            "counter",
            "",
            [("", self.alerts_dropped())],
        );
        let probe = self
            .inner
            .probe
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(p) = probe {
            let (fill, dropped) = (p.ring_fill(), p.dropped());
            family(
                &mut s,
                "killswitch_audit_ring_fill_ratio",
                "Fill of the audit logger's rings (0..1).",
                "gauge",
                "ring",
                RING_NAMES.iter().zip(fill),
            );
            family(
                &mut s,
                "killswitch_audit_ring_dropped_total",
                "Records dropped by the audit logger's rings.",
                "counter",
                "ring",
                RING_NAMES.iter().zip(dropped),
            );
            family(
                &mut s,
                "killswitch_audit_sink_errors_total",
                "Disk errors of the audit logger's sink (full disk, EIO); it retries with backoff.",
                "counter",
                "",
                [("", p.sink_errors())],
            );
        }
        s
    }
}

/// Nanoseconds shown as seconds in Prometheus' float syntax.
struct Secs(u64);

impl std::fmt::Display for Secs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:e}", self.0 as f64 / 1e9)
    }
}

/// Writes one metric family: `# HELP`, `# TYPE`, then one `name{label="value"} v` line per
/// sample (no braces when `label` is empty). Label values must already be escaped.
fn family<L: std::fmt::Display, V: std::fmt::Display>(
    s: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    label: &str,
    samples: impl IntoIterator<Item = (L, V)>,
) {
    let _ = writeln!(s, "# HELP {name} {help}");
    let _ = writeln!(s, "# TYPE {name} {kind}");
    for (l, v) in samples {
        let _ = if label.is_empty() {
            writeln!(s, "{name} {v}")
        } else {
            writeln!(s, "{name}{{{label}=\"{l}\"}} {v}")
        };
    }
}

fn escape_label(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}
