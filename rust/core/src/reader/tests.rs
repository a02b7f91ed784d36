//! Reader and verify tests on segment files laid out byte by byte (docs/FORMAT.md), so they
//! check the reader against the format rather than against the writer.
use super::verify::verify_log;
use super::*;
use crate::chain::Chain;
use crate::record::kind;

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

fn rec(seq: u64, k: u8) -> [u8; RECORD_SIZE] {
    Record {
        seq,
        wall_ns: 1_700_000_000_000_000_000 + seq,
        kind: k,
        a: seq as i64,
        ..Record::default()
    }
    .to_bytes()
}

/// Writes segment `index` holding `recs` (all chained) with `committed` and `flags`; returns
/// its path and final chain value.
fn write_seg(
    dir: &Path,
    index: u64,
    recs: &[[u8; RECORD_SIZE]],
    capacity: u64,
    flags: u32,
    prev: ChainHead,
    key: Option<&[u8]>,
) -> (PathBuf, ChainHead) {
    let mut h = vec![0u8; HEADER_SIZE];
    h[..8].copy_from_slice(MAGIC);
    h[off::VERSION..off::VERSION + 2].copy_from_slice(&VERSION.to_le_bytes());
    h[off::RECORD_SIZE..off::RECORD_SIZE + 2].copy_from_slice(&64u16.to_le_bytes());
    h[off::HEADER_SIZE..off::HEADER_SIZE + 4].copy_from_slice(&4096u32.to_le_bytes());
    h[off::SEGMENT_INDEX..off::SEGMENT_INDEX + 8].copy_from_slice(&index.to_le_bytes());
    h[off::FLAGS..off::FLAGS + 4].copy_from_slice(&flags.to_le_bytes());
    h[off::CAPACITY..off::CAPACITY + 8].copy_from_slice(&capacity.to_le_bytes());
    let n = recs.len() as u64;
    h[off::COMMITTED..off::COMMITTED + 8].copy_from_slice(&n.to_le_bytes());
    h[off::CHAIN_RECORDS..off::CHAIN_RECORDS + 8].copy_from_slice(&n.to_le_bytes());
    let mut chain = Chain::start(key, &prev, index);
    for r in recs {
        chain.update(r);
    }
    let head = chain.head();
    h[off::CHAIN_HEAD..off::CHAIN_HEAD + 32].copy_from_slice(&head);
    h[off::PREV_CHAIN..off::PREV_CHAIN + 32].copy_from_slice(&prev);
    h[OFF_SEQ_RESERVED..OFF_SEQ_RESERVED + 8].copy_from_slice(&777u64.to_le_bytes());
    let mut body = vec![0u8; (capacity as usize) * RECORD_SIZE];
    for (i, r) in recs.iter().enumerate() {
        body[i * RECORD_SIZE..(i + 1) * RECORD_SIZE].copy_from_slice(r);
    }
    h.extend_from_slice(&body);
    let path = crate::segment::segment_path(dir, index);
    std::fs::write(&path, h).unwrap();
    (path, head)
}

fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

fn trades(from: u64, n: u64) -> Vec<[u8; RECORD_SIZE]> {
    (from..from + n).map(|s| rec(s, kind::TRADE)).collect()
}

#[test]
fn reads_back_and_reports_new_header_fields() {
    let d = tempfile::tempdir().unwrap();
    let (p, head) = write_seg(d.path(), 0, &trades(0, 10), 16, FLAG_CLOSED, [0; 32], None);
    let c = read_segment(&p).unwrap();
    assert_eq!(c.records.len(), 10);
    assert_eq!(c.header.seq_reserved, 777);
    assert_eq!(c.header.chain_head, head);
    let scan = scan_segment(&p, ScanOptions::default()).unwrap();
    assert_eq!(verify_segment_chain(&scan, Some(&[0; 32]), None), Ok(head));
    assert!(verify_segment_chain(&scan, None, Some(KEY)).is_err());
    let r = verify_log(d.path(), None).unwrap();
    assert!(r.ok, "{r:?}");
}

#[test]
fn forged_records_after_committed_of_a_closed_segment_are_never_read() {
    let d = tempfile::tempdir().unwrap();
    let (p, _) = write_seg(d.path(), 0, &trades(0, 10), 16, FLAG_CLOSED, [0; 32], None);
    patch(&p, HDR + 10 * REC, &rec(10, kind::RESET));
    assert_eq!(read_segment(&p).unwrap().records.len(), 10);
    let r = verify_log(d.path(), None).unwrap();
    assert!(!r.ok);
    assert_eq!(r.corrupt[0].1, HDR + 10 * REC, "{r:?}");
}

#[test]
fn open_segment_tail_is_read_while_valid_and_torn_record_reported() {
    let d = tempfile::tempdir().unwrap();
    let (p, _) = write_seg(d.path(), 0, &trades(0, 4), 16, 0, [0; 32], None);
    patch(&p, HDR + 4 * REC, &rec(4, kind::TRADE));
    let mut torn = rec(5, kind::TRADE);
    torn[40] ^= 1;
    patch(&p, HDR + 5 * REC, &torn);
    patch(&p, HDR + 6 * REC, &rec(6, kind::TRADE));
    let c = read_segment(&p).unwrap();
    assert_eq!(c.records.len(), 5);
    assert_eq!(c.torn_at, Some(HDR + 5 * REC));
    let salv = scan_segment(
        &p,
        ScanOptions {
            salvage: true,
            check_slack: false,
        },
    )
    .unwrap();
    assert_eq!(salv.salvaged_slots, vec![6]);
}

#[test]
fn bad_committed_record_names_offset_and_salvage_keeps_the_rest() {
    let d = tempfile::tempdir().unwrap();
    let (p, _) = write_seg(d.path(), 0, &trades(0, 10), 16, FLAG_CLOSED, [0; 32], None);
    patch(&p, HDR + 3 * REC + 33, &[0xFF]);
    match read_segment(&p) {
        Err(ReadError::Corrupt { offset, .. }) => assert_eq!(offset, HDR + 3 * REC),
        other => panic!("{other:?}"),
    }
    let s = scan_segment(
        &p,
        ScanOptions {
            salvage: true,
            check_slack: false,
        },
    )
    .unwrap();
    assert_eq!((s.n_valid, s.salvaged_slots.len()), (3, 6));
}

#[test]
fn garbage_past_capacity_and_empty_places_fail_verify() {
    let d = tempfile::tempdir().unwrap();
    assert!(!verify_log(d.path(), None).unwrap().ok);
    let (p, _) = write_seg(d.path(), 0, &trades(0, 4), 4, FLAG_CLOSED, [0; 32], None);
    assert!(verify_log(d.path(), None).unwrap().ok);
    let len = std::fs::metadata(&p).unwrap().len();
    patch(&p, len, b"garbage");
    let r = verify_log(d.path(), None).unwrap();
    assert!(!r.ok);
    assert_eq!(r.corrupt[0].1, len);
}

#[test]
fn a_key_requires_every_segment_keyed_and_mixed_logs_fail() {
    let d = tempfile::tempdir().unwrap();
    let (_, h0) = write_seg(
        d.path(),
        0,
        &trades(0, 4),
        4,
        FLAG_CLOSED | FLAG_KEYED,
        [0; 32],
        Some(KEY),
    );
    write_seg(d.path(), 1, &trades(4, 4), 4, FLAG_CLOSED, h0, None);
    let with_key = verify_log(d.path(), Some(KEY)).unwrap();
    assert!(!with_key.ok && with_key.chain_errors[0].0.ends_with("000000000001.seg"));
    let without = verify_log(d.path(), None).unwrap();
    assert!(!without.ok);
}

#[test]
fn crashed_session_reports_possible_loss_up_to_its_mark() {
    let d = tempfile::tempdir().unwrap();
    let start = |seq: u64, first: u64| {
        let mut r = Record::from_bytes(&rec(seq, kind::SESSION_START));
        r.b = first as i64;
        r.flags = crate::record::FLAG_SYSTEM;
        r.to_bytes()
    };
    let mut s0 = vec![start(0, 0)];
    s0.extend(trades(1, 9)); // seqs 0..=9, no SESSION_END, mark 777 (write_seg)
    let (_, h0) = write_seg(d.path(), 0, &s0, 16, FLAG_CLOSED, [0; 32], None);
    let s1 = vec![start(777, 777), rec(778, kind::TRADE)];
    write_seg(d.path(), 1, &s1, 16, FLAG_CLOSED, h0, None);
    let r = verify_log(d.path(), None).unwrap();
    assert_eq!(r.possible_loss.len(), 1, "{r:?}");
    assert_eq!((r.possible_loss[0].from, r.possible_loss[0].to), (10, 777));
    assert!(r.unaccounted_missing.is_empty(), "{r:?}");
    assert!(!r.ok);
}
