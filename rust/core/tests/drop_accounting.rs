//! Drop accounting under contention: producers overflow a tiny main ring while the flusher
//! drains it and turns drop counts into GAP records. Every GAP must cover every seq it counts
//! (`count <= last - first + 1`), every missing seq must lie inside a GAP of the main ring, and
//! the counts must add up to the logger's drop counter (docs/FORMAT.md, sequence accounting).
//!
//! Regression test for a race in which a drop noted while the flusher took its snapshot put
//! its seq in one GAP's range and its count in the next GAP (whose range missed it).
use ksa_core::logger::{AppendError, Logger, LoggerConfig};
use ksa_core::reader::read_all;
use ksa_core::record::kind;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn gap_records_cover_every_dropped_seq_under_contention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = LoggerConfig::new(dir.path());
    c.main_capacity = 64;
    c.emergency_capacity = 64;
    c.flush_interval = Duration::from_micros(100);
    let logger = Arc::new(Logger::open(c).expect("open"));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let (logger, stop) = (Arc::clone(&logger), Arc::clone(&stop));
            std::thread::spawn(move || {
                let (mut ok, mut dropped) = (Vec::new(), 0u64);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    match logger.audit_trade(t, i as i64, 1, i) {
                        Ok(seq) => ok.push(seq),
                        Err(AppendError::Dropped(_)) => dropped += 1,
                        Err(AppendError::Closed) => break,
                    }
                }
                (ok, dropped)
            })
        })
        .collect();
    let deadline =
        Instant::now() + Duration::from_millis(if cfg!(debug_assertions) { 400 } else { 800 });
    while Instant::now() < deadline && logger.stats().dropped_main < 200_000 {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    let mut accepted = BTreeSet::new();
    let mut dropped = 0;
    for t in threads {
        let (ok, d) = t.join().expect("producer");
        accepted.extend(ok);
        dropped += d;
    }
    logger.close();
    assert_eq!(logger.stats().dropped_main, dropped);
    assert!(
        dropped > 1000,
        "the ring never overflowed ({dropped} drops): the test proves nothing"
    );

    let records = read_all(dir.path()).expect("read back");
    let present: BTreeSet<u64> = records.iter().map(|r| r.seq).collect();
    assert!(
        accepted.is_subset(&present),
        "an accepted record is missing"
    );
    let gaps: Vec<_> = records
        .iter()
        .filter(|r| r.kind == kind::GAP && r.code == 0)
        .collect();
    let mut covered = BTreeSet::new();
    let mut declared = 0u64;
    for g in &gaps {
        let (first, count, last) = (g.a as u64, g.b as u64, g.c);
        assert!(
            first <= last && count >= 1,
            "malformed GAP {first} {count} {last}"
        );
        assert!(
            count <= last - first + 1,
            "GAP counts {count} seqs in a range of {}",
            last - first + 1
        );
        covered.extend(first..=last);
        declared += count;
    }
    assert_eq!(declared, dropped, "GAP counts do not add up to the drops");
    let max = *present.iter().max().expect("records");
    let missing: Vec<u64> = (0..=max).filter(|s| !present.contains(s)).collect();
    let uncovered: Vec<u64> = missing
        .iter()
        .copied()
        .filter(|s| !covered.contains(s))
        .collect();
    assert!(
        uncovered.is_empty(),
        "{} dropped seq(s) outside every GAP, e.g. {:?}",
        uncovered.len(),
        &uncovered[..uncovered.len().min(5)]
    );
    assert_eq!(missing.len() as u64, dropped, "missing seqs vs drops");
}
