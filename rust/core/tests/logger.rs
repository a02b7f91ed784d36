//! End-to-end tests of the logger: rings -> flusher -> segment files -> reader.
use ksa_core::chain::Chain;
use ksa_core::logger::{AppendError, Logger, LoggerConfig, RingId};
use ksa_core::reader::{list_segments, read_all, read_segment};
use ksa_core::record::{kind, Record, RECORD_SIZE};
use ksa_core::segment::HEADER_SIZE;
use std::collections::BTreeSet;
use std::time::Duration;

fn config(dir: &std::path::Path) -> LoggerConfig {
    let mut c = LoggerConfig::new(dir);
    c.main_capacity = 1024;
    c.emergency_capacity = 64;
    c
}

fn audit_seqs(records: &[Record]) -> BTreeSet<u64> {
    records
        .iter()
        .filter(|r| !r.is_system())
        .map(|r| r.seq)
        .collect()
}

#[test]
fn both_rings_round_trip_and_close_drains_everything() {
    let dir = tempfile::tempdir().unwrap();
    let logger = Logger::open(config(dir.path())).unwrap();
    let mut expected = BTreeSet::new();
    for i in 0..5000u64 {
        let seq = if i % 100 == 0 {
            logger
                .audit_kill_switch(1, i as u32, -(i as i64), 7)
                .unwrap()
        } else {
            loop {
                match logger.audit_trade(i as u32, i as i64, 100, i) {
                    Ok(seq) => break seq,
                    // A starved flusher (tests run in parallel on 2 cores) may let the ring
                    // fill: the drop is counted and GAP-recorded; retry with a new seq.
                    Err(AppendError::Dropped(_)) => std::thread::sleep(Duration::from_millis(1)),
                    Err(e) => panic!("{e:?}"),
                }
            }
        };
        expected.insert(seq);
        if i % 500 == 0 {
            std::thread::sleep(Duration::from_millis(3));
        }
    }
    logger.close();
    assert!(matches!(
        logger.audit_trade(1, 1, 1, 1),
        Err(AppendError::Closed)
    ));
    let records = read_all(dir.path()).unwrap();
    assert_eq!(audit_seqs(&records), expected);
    let ks: Vec<_> = records
        .iter()
        .filter(|r| r.kind == kind::KILL_SWITCH)
        .collect();
    assert_eq!(ks.len(), 50);
    assert!(ks
        .iter()
        .all(|r| r.flags & ksa_core::record::FLAG_EMERGENCY != 0 && r.code == 1 && r.b == 7));
    let trade = records
        .iter()
        .find(|r| r.kind == kind::TRADE && r.symbol_id == 1)
        .unwrap();
    assert_eq!((trade.a, trade.b, trade.c), (1, 100, 1));
    let now = ksa_core::clock::realtime_ns();
    assert!(
        records
            .iter()
            .all(|r| r.wall_ns <= now + 1_000_000 && r.wall_ns > now - 60_000_000_000),
        "plausible UTC stamps"
    );
    let kinds: Vec<u8> = records
        .iter()
        .filter(|r| r.is_system())
        .map(|r| r.kind)
        .collect();
    assert_eq!(kinds.first(), Some(&kind::SESSION_START));
    assert_eq!(kinds.last(), Some(&kind::SESSION_END));
    assert!(kinds.contains(&kind::CLOCK));
}

#[test]
fn full_main_ring_drops_are_counted_and_gap_recorded_and_kill_switch_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let logger = Logger::open(config(dir.path())).unwrap();
    logger.set_paused(true);
    let mut stored = BTreeSet::new();
    let mut dropped = BTreeSet::new();
    for i in 0..3000u64 {
        match logger.audit_trade(1, i as i64, 1, i) {
            Ok(seq) => stored.insert(seq),
            Err(AppendError::Dropped(seq)) => dropped.insert(seq),
            Err(e) => panic!("{e:?}"),
        };
    }
    assert_eq!(stored.len(), 1024, "main ring holds exactly its capacity");
    assert_eq!(dropped.len(), 3000 - 1024);
    let ks = logger
        .audit_kill_switch(2, 9, 10, -5)
        .expect("emergency ring unaffected by a full main ring");
    assert_eq!(logger.stats().dropped_main, dropped.len() as u64);
    logger.set_paused(false);
    assert!(logger.flush(Some(Duration::from_secs(5)), false));
    logger.close();
    let records = read_all(dir.path()).unwrap();
    let seqs = audit_seqs(&records);
    assert!(seqs.contains(&ks));
    assert!(stored.iter().all(|s| seqs.contains(s)));
    let gaps: Vec<_> = records.iter().filter(|r| r.kind == kind::GAP).collect();
    let lost: i64 = gaps.iter().map(|g| g.b).sum();
    assert_eq!(lost as usize, dropped.len());
    assert!(gaps.iter().all(|g| g.code == 0));
    let (first, last) = (*dropped.first().unwrap(), *dropped.last().unwrap());
    assert!(
        gaps.iter().any(|g| g.a as u64 <= first && g.c >= last),
        "GAP names the lost range"
    );
}

#[test]
fn emergency_ring_full_is_counted_and_gap_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let logger = Logger::open(config(dir.path())).unwrap();
    logger.set_paused(true);
    let results: Vec<_> = (0..100)
        .map(|i| logger.audit_kill_switch(1, i, 0, 0))
        .collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 64);
    assert_eq!(logger.stats().dropped_emergency, 36);
    logger.set_paused(false);
    logger.close();
    let records = read_all(dir.path()).unwrap();
    let gap: i64 = records
        .iter()
        .filter(|r| r.kind == kind::GAP && r.code == 1)
        .map(|r| r.b)
        .sum();
    assert_eq!(gap, 36);
}

#[test]
fn segments_roll_over_and_the_chain_links_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_bytes = (HEADER_SIZE + 256 * RECORD_SIZE) as u64;
    let logger = Logger::open(cfg).unwrap();
    let mut expected = BTreeSet::new();
    for i in 0..3000u64 {
        loop {
            match logger.append(RingId::Main, kind::USER, 0, 0, i as i64, 0, 0) {
                Ok(seq) => {
                    expected.insert(seq);
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_micros(200)),
            }
        }
    }
    logger.close();
    let segments = list_segments(dir.path()).unwrap();
    assert!(
        segments.len() >= 12,
        "3000 records in 256-slot segments: {} segments",
        segments.len()
    );
    let mut prev = [0u8; 32];
    let mut all = Vec::new();
    for (index, path) in &segments {
        let seg = read_segment(path).unwrap();
        assert!(seg.header.is_closed());
        assert_eq!(seg.header.segment_index, *index);
        assert_eq!(
            seg.header.prev_chain, prev,
            "segment {index} links to the previous one"
        );
        let bytes = std::fs::read(path).unwrap();
        let mut chain = Chain::start(None, &prev, *index);
        chain
            .update(&bytes[HEADER_SIZE..HEADER_SIZE + seg.header.committed as usize * RECORD_SIZE]);
        assert_eq!(chain.head(), seg.header.chain_head);
        prev = seg.header.chain_head;
        all.extend(seg.records);
    }
    assert!(!dir.path().read_dir().unwrap().any(|e| e
        .unwrap()
        .path()
        .to_string_lossy()
        .ends_with(".next")));
    assert_eq!(audit_seqs(&all), expected);
}

#[test]
fn reopening_continues_sequence_and_chain() {
    let dir = tempfile::tempdir().unwrap();
    let first = Logger::open(config(dir.path())).unwrap();
    let a = first.audit_trade(1, 1, 1, 1).unwrap();
    first.close();
    drop(first);
    let second = Logger::open(config(dir.path())).unwrap();
    let b = second.audit_trade(1, 1, 1, 1).unwrap();
    second.close();
    assert!(b > a);
    let segments = list_segments(dir.path()).unwrap();
    assert_eq!(segments.len(), 2);
    let s0 = read_segment(&segments[0].1).unwrap();
    let s1 = read_segment(&segments[1].1).unwrap();
    assert_eq!(s1.header.prev_chain, s0.header.chain_head);
}

#[test]
fn many_threads_no_loss_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.main_capacity = 1 << 16;
    let logger = std::sync::Arc::new(Logger::open(cfg).unwrap());
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let logger = logger.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..20_000u64 {
                    let r = if i % 1000 == 0 {
                        logger.audit_kill_switch(1, t, 0, 0)
                    } else {
                        logger.audit_trade(t, i as i64, 0, i)
                    };
                    match r {
                        Ok(seq) => mine.push(seq),
                        Err(AppendError::Dropped(_)) => {
                            std::thread::sleep(Duration::from_micros(50))
                        }
                        Err(e) => panic!("{e:?}"),
                    }
                }
                mine
            })
        })
        .collect();
    let mut expected = BTreeSet::new();
    for h in handles {
        for s in h.join().unwrap() {
            assert!(expected.insert(s), "seq {s} handed out twice");
        }
    }
    let dropped = logger.stats().dropped_main;
    logger.close();
    let records = read_all(dir.path()).unwrap();
    let seqs: Vec<u64> = records
        .iter()
        .filter(|r| !r.is_system())
        .map(|r| r.seq)
        .collect();
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), seqs.len(), "no duplicate in the file");
    assert_eq!(unique, expected, "every accepted record persisted");
    let gap: i64 = records
        .iter()
        .filter(|r| r.kind == kind::GAP && r.code == 0)
        .map(|r| r.b)
        .sum();
    assert_eq!(gap as u64, dropped);
}

#[test]
fn audit_takes_application_kinds_only_and_routes_kill_switches_to_the_emergency_ring() {
    use ksa_core::logger::AuditError;
    use ksa_core::record::FLAG_EMERGENCY;
    let dir = tempfile::tempdir().unwrap();
    let logger = Logger::open(config(dir.path())).unwrap();
    for bad in [0u8, kind::GAP, 200] {
        assert_eq!(
            logger.audit(bad, 0, 0, 0, 0, 0, false),
            Err(AuditError::NotApplicationKind(bad))
        );
    }
    let ks = logger
        .audit(kind::KILL_SWITCH, 3, 7, 0, 0, 0, false)
        .unwrap();
    let trade = logger.audit(kind::TRADE, 0, 7, 1, 2, 3, false).unwrap();
    let urgent = logger.audit(kind::TRADE, 0, 7, 1, 2, 3, true).unwrap();
    logger.close();
    let records = read_all(dir.path()).unwrap();
    let flags = |seq: u64| records.iter().find(|r| r.seq == seq).unwrap().flags;
    assert_ne!(
        flags(ks) & FLAG_EMERGENCY,
        0,
        "a KILL_SWITCH always rides the emergency ring"
    );
    assert_eq!(flags(trade) & FLAG_EMERGENCY, 0);
    assert_ne!(flags(urgent) & FLAG_EMERGENCY, 0);
}
