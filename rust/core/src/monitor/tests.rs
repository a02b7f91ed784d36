//! Unit tests of the monitor: quantile precision, sharding under threads, clamping, the rolling
//! window, alert rate limiting and delivery, and the exports.
use std::io;

use super::table::TABLE_SLOTS;
use super::*;

fn manual(cfg: MonitorConfig) -> Monitor {
    Monitor::new(MonitorConfig {
        background: false,
        ..cfg
    })
}

#[test]
fn quantiles_match_exact_values_within_precision() {
    let m = manual(MonitorConfig::default());
    let mut vals: Vec<u64> = (1..=100_000u64).map(|i| i * 37 % 1_000_003 + 100).collect();
    for v in &vals {
        m.record("op", *v);
    }
    vals.sort_unstable();
    let a = m.analysis("op", false).unwrap();
    assert_eq!(a.count, vals.len() as u64);
    assert_eq!(a.sum_ns, vals.iter().sum::<u64>());
    for (q, got) in QUANTILES.iter().zip(a.quantiles_ns.iter()) {
        let idx = ((q * vals.len() as f64).ceil() as usize).max(1) - 1;
        let exact = vals[idx] as f64;
        assert!(
            (*got as f64 - exact).abs() <= exact * 1e-3 + 1.0,
            "q{q}: {got} vs {exact}"
        );
    }
}

#[test]
fn more_operations_than_the_lookup_table_holds() {
    let m = manual(MonitorConfig::default());
    for round in 0..3u64 {
        for i in 0..(TABLE_SLOTS + 100) {
            m.record(&format!("op{i}"), 1_000 + round);
        }
    }
    assert_eq!(m.operation_names().len(), TABLE_SLOTS + 100);
    for i in [0, TABLE_SLOTS - 1, TABLE_SLOTS + 99] {
        assert_eq!(m.analysis(&format!("op{i}"), false).unwrap().count, 3);
    }
}

#[test]
fn clamps_and_counts_values_out_of_range() {
    let m = manual(MonitorConfig::default());
    m.record("op", u64::MAX);
    m.record("op", 0);
    let a = m.analysis("op", false).unwrap();
    assert_eq!(a.count, 2);
    assert_eq!(a.clamped, 1);
    assert_eq!(a.breaches, 1);
    assert!(a.max_ns >= HIGHEST_TRACKABLE_NS);
}

#[test]
fn eight_threads_lose_no_count() {
    let m = Arc::new(manual(MonitorConfig::default()));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let m = Arc::clone(&m);
            std::thread::spawn(move || {
                let op = m.operation("shared");
                for i in 0..50_000u64 {
                    op.record(100 + (i + t) % 1000);
                    if i % 10_000 == 0 {
                        // Concurrent snapshots must not lose records either.
                        let _ = m.analysis("shared", false);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(m.analysis("shared", false).unwrap().count, 400_000);
}

#[test]
fn breach_alerts_are_exact_and_rate_limited() {
    let m = manual(MonitorConfig {
        breach_threshold_ns: 20_000,
        rate_limit: Duration::from_secs(3600),
        ..Default::default()
    });
    m.record("trade_audit", 20_000); // equal: not a breach
    m.evaluate();
    assert!(m.take_alerts().is_empty());
    for _ in 0..100_000 {
        m.record("trade_audit", 25_000);
    }
    m.evaluate();
    for _ in 0..10 {
        m.record("trade_audit", 30_000);
    }
    m.evaluate();
    let alerts = m.take_alerts();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].kind, AlertKind::LatencyBreach);
    assert_eq!(alerts[0].count, 100_000);
    assert_eq!(m.analysis("trade_audit", false).unwrap().breaches, 100_010);
}

#[test]
fn pending_breaches_are_reported_once_the_rate_limit_passes() {
    let m = manual(MonitorConfig {
        rate_limit: Duration::from_millis(50),
        ..Default::default()
    });
    m.record("x", 1_000_000);
    m.evaluate();
    m.record("x", 2_000_000);
    m.record("x", 3_000_000);
    m.evaluate();
    std::thread::sleep(Duration::from_millis(60));
    m.evaluate();
    let a = m.take_alerts();
    assert_eq!(a.iter().map(|a| a.count).collect::<Vec<_>>(), vec![1, 2]);
    assert!((a[1].value - 3000.0).abs() < 5.0);
}

#[test]
fn regression_alert_on_kill_switch_p9997() {
    let m = manual(MonitorConfig {
        regression_target_ns: 10_000,
        breach_threshold_ns: 1_000_000_000,
        rate_limit: Duration::from_millis(1),
        ..Default::default()
    });
    for _ in 0..1000 {
        m.record("trade_audit", 50_000); // not a kill-switch operation
        m.record("kill_switch_audit", 1_000);
    }
    m.evaluate();
    assert!(m.take_alerts().is_empty());
    for _ in 0..10 {
        m.record("emergency_stop", 15_000);
    }
    m.evaluate();
    let a = m.take_alerts();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].kind, AlertKind::Regression);
    assert_eq!(a[0].count, 10);
    assert_eq!(m.kill_switch_analysis(false).count, 1010);
    // Still regressed, but nothing new: no repeat however long we wait.
    std::thread::sleep(Duration::from_millis(5));
    m.evaluate();
    assert!(m.take_alerts().is_empty());
    // A new slow kill-switch record while regressed: alert again.
    m.record("kill_switch_audit", 12_000);
    m.evaluate();
    let a = m.take_alerts();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].count, 11);
}

#[test]
fn buffer_pressure_from_probe() {
    let m = manual(MonitorConfig::default());
    let p = Arc::new(ManualProbe::new());
    m.attach_probe(p.clone());
    p.set([0.8, 0.1], [0, 0]);
    m.evaluate();
    assert!(m.take_alerts().is_empty());
    p.set([0.95, 0.1], [7, 0]);
    m.evaluate();
    let a = m.take_alerts();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].operation, "main");
    assert!(m.prometheus_text().contains("ring=\"main\"} 7"));
}

#[test]
fn window_forgets_old_intervals_total_does_not() {
    let m = manual(MonitorConfig {
        window: Duration::from_millis(120),
        ..Default::default()
    });
    m.record("op", 1_000);
    // What the evaluator thread does: tick more often than the 10 ms step.
    for _ in 0..60 {
        m.evaluate();
        std::thread::sleep(Duration::from_millis(5));
    }
    m.record("op", 2_000);
    assert_eq!(m.analysis("op", true).unwrap().count, 1);
    assert_eq!(m.analysis("op", false).unwrap().count, 2);
}

#[test]
fn hlog_round_trips_through_the_crate_reader() {
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;
    let m = manual(MonitorConfig::default());
    for i in 1..=1000 {
        m.record("kill_switch_audit", i * 10);
    }
    let mut buf = Vec::new();
    m.write_hlog(&mut buf, false).unwrap();
    let mut n = 0;
    for e in IntervalLogIterator::new(&buf) {
        if let Ok(LogEntry::Interval(ih)) = e {
            assert_eq!(ih.tag().unwrap().as_str(), "kill_switch_audit");
            let bytes = base64_decode(ih.encoded_histogram());
            let h: Histogram<u64> = Deserializer::new()
                .deserialize(&mut io::Cursor::new(bytes))
                .unwrap();
            assert_eq!(h.len(), 1000);
            n += 1;
        }
    }
    assert_eq!(n, 1);
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::new();
    for ch in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in ch.iter().enumerate() {
            acc |= u32::from(val(*c)) << (18 - 6 * i);
        }
        for i in 0..ch.len().saturating_sub(1) {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    out
}

#[test]
fn failing_sink_changes_nothing() {
    let m = Monitor::new(MonitorConfig {
        tick: Duration::from_millis(5),
        rate_limit: Duration::from_millis(1),
        ..Default::default()
    });
    let seen = Arc::new(AtomicU64::new(0));
    m.add_alert_sink(Arc::new(|_| panic!("sink failure")));
    let s2 = Arc::clone(&seen);
    m.add_alert_sink(Arc::new(move |a| {
        s2.fetch_add(a.count, Ordering::Relaxed);
    }));
    for _ in 0..1000 {
        m.record("x", 100_000);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.load(Ordering::Relaxed) < 1000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(seen.load(Ordering::Relaxed), 1000);
    assert_eq!(m.analysis("x", false).unwrap().count, 1000);
    m.shutdown();
}

#[test]
fn shutdown_timeout_does_not_wait_for_a_blocked_sink() {
    let m = Monitor::new(MonitorConfig {
        tick: Duration::from_millis(1),
        ..Default::default()
    });
    let (tx, rx) = mpsc::channel::<()>();
    let rx = Mutex::new(rx);
    m.add_alert_sink(Arc::new(move |_| {
        let _ = lock(&rx).recv_timeout(Duration::from_secs(10));
    }));
    m.record("x", 1_000_000);
    std::thread::sleep(Duration::from_millis(50)); // delivery is now blocked in the sink
    let t0 = Instant::now();
    assert!(!m.shutdown_timeout(Duration::from_millis(50)));
    assert!(t0.elapsed() < Duration::from_secs(5));
    drop(tx); // unblocks the sink; the thread ends on its own
    assert!(m.shutdown_timeout(Duration::from_secs(5)));
}

#[test]
fn prometheus_text_has_the_summary() {
    let m = manual(MonitorConfig::default());
    m.record("a\"b", 1_000);
    let t = m.prometheus_text();
    assert!(
        t.contains(
            "killswitch_audit_latency_seconds{operation=\"a\\\"b\",quantile=\"0.9997\"} 1e-6"
        ),
        "{t}"
    );
    assert!(t.contains("killswitch_audit_latency_seconds_count{operation=\"a\\\"b\"} 1"));
}
