//! The direct engine (`Engine::Direct`): the caller writes its record itself. Same files,
//! same chain, same reader and verifier as the ring engine.
use ksa_core::logger::{Engine, Logger, LoggerConfig, RingId};
use ksa_core::reader::verify::verify_log;
use ksa_core::reader::{list_segments, read_all, read_segment};
use ksa_core::record::{kind, RECORD_SIZE};
use ksa_core::segment::HEADER_SIZE;
use std::collections::BTreeSet;

fn config(dir: &std::path::Path) -> LoggerConfig {
    let mut c = LoggerConfig::new(dir);
    c.engine = Engine::Direct;
    c
}

#[test]
fn each_record_is_committed_before_the_call_returns() {
    let dir = tempfile::tempdir().unwrap();
    let logger = Logger::open(config(dir.path())).unwrap();
    let seq = logger.audit_trade(7, 100, 10_125, 42).unwrap();
    // No flush, no close: the file already holds it (what kill -9 would leave).
    let seg = &list_segments(dir.path()).unwrap()[0].1;
    let records = read_segment(seg).unwrap().records;
    let r = records.iter().find(|r| r.seq == seq).expect("on file");
    assert_eq!(
        (r.kind, r.symbol_id, r.a, r.b, r.c),
        (kind::TRADE, 7, 100, 10_125, 42)
    );
    let ks = logger.audit_kill_switch(1, 7, 100, -5).unwrap();
    assert!(ks > seq);
    let records = read_segment(seg).unwrap().records;
    assert!(records
        .iter()
        .any(|r| r.seq == ks && r.kind == kind::KILL_SWITCH));
    let s = logger.stats();
    assert_eq!(s.records_written, 2);
    assert_eq!((s.main_ring_capacity, s.emergency_ring_capacity), (0, 0));
    logger.close();
}

#[test]
fn rolls_chain_and_verify_like_the_ring_engine_keyed_too() {
    for key in [None, Some(b"secret key".to_vec())] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.segment_bytes = (HEADER_SIZE + 256 * RECORD_SIZE) as u64;
        cfg.hmac_key = key.clone();
        if key.is_some() {
            // Every call is a tick: the chain catches up inline after each record.
            cfg.flush_interval = std::time::Duration::from_micros(1);
        }
        let logger = Logger::open(cfg).unwrap();
        let mut expected = BTreeSet::new();
        for i in 0..3000u64 {
            let ring = if i % 100 == 0 {
                RingId::Emergency
            } else {
                RingId::Main
            };
            let seq = logger
                .append(ring, kind::USER, 0, 0, i as i64, 0, 0)
                .unwrap();
            expected.insert(seq);
        }
        assert!(logger.flush_with(None, true, true));
        logger.close();
        let segments = list_segments(dir.path()).unwrap();
        assert!(segments.len() >= 12, "{} segments", segments.len());
        for (_, path) in &segments {
            assert!(read_segment(path).unwrap().header.is_closed());
        }
        let all = read_all(dir.path()).unwrap();
        let got: BTreeSet<u64> = all
            .iter()
            .filter(|r| !r.is_system())
            .map(|r| r.seq)
            .collect();
        assert_eq!(got, expected);
        let report = verify_log(dir.path(), key.as_deref()).unwrap();
        assert!(report.ok && report.chain_ok, "{report:?}");
        assert_eq!(report.keyed, key.is_some());
        // Reopened (either engine) it continues seq and chain.
        let mut again = LoggerConfig::new(dir.path());
        again.hmac_key = key.clone();
        let next = Logger::open(again).unwrap();
        assert!(next.audit_trade(1, 1, 1, 1).unwrap() > *expected.last().unwrap());
        next.close();
        let report = verify_log(dir.path(), key.as_deref()).unwrap();
        assert!(report.ok && report.chain_ok, "{report:?}");
    }
}

#[test]
fn a_chained_flush_covers_every_returned_record() {
    let dir = tempfile::tempdir().unwrap();
    let logger = Logger::open(config(dir.path())).unwrap();
    for i in 0..10 {
        logger.audit_trade(1, i, 1, 0).unwrap();
    }
    assert!(logger.flush_with(None, false, true));
    let seg = &list_segments(dir.path()).unwrap()[0].1;
    let h = read_segment(seg).unwrap().header;
    assert_eq!(h.chain_records, h.committed);
    assert!(logger.flush_emergency(None));
    logger.close();
    assert!(logger.audit_trade(1, 1, 1, 0).is_err(), "closed");
}
