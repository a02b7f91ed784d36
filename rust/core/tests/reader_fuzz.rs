//! Fuzzes the segment parser ([`ksa_core::reader::read_segment`]) with damaged copies of real
//! segments written by the logger: truncations, bit flips, garbage and wrong-version headers,
//! absurd `capacity`/`committed`, zeroed and appended regions, an open (unsealed) segment.
//!
//! For every input the parser must return `Ok` with a prefix of the original records (never a
//! record that was not in the file, never one out of place) or `Err(Corrupt)`; never panic,
//! never hang (each case is timed) and never allocate much more than the file (a counting
//! global allocator records the largest single allocation). Deterministic: a seeded xorshift.
use ksa_core::logger::{Logger, LoggerConfig};
use ksa_core::reader::{parse_header, read_segment, ReadError};
use ksa_core::record::{Record, RECORD_SIZE};
use ksa_core::segment::{off, FLAG_CLOSED, HEADER_SIZE};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Tracks the largest single allocation, so a parser that trusts a size field from the file
/// (`Vec::with_capacity(committed)`) shows up even when the allocation happens to succeed.
struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the only
// addition is a relaxed atomic max on the requested size.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout (forwarded above).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: same contract as ours, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// Writes a small multi-segment log and returns (closed full segment, closed last segment).
fn real_segments(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let mut c = LoggerConfig::new(dir);
    c.main_capacity = 1024;
    c.emergency_capacity = 64;
    c.segment_bytes = (HEADER_SIZE + 256 * RECORD_SIZE) as u64;
    let logger = Logger::open(c).expect("open");
    for i in 0..400u32 {
        if i % 20 == 0 {
            logger
                .audit_kill_switch(3, i, i64::from(i), -i64::from(i))
                .expect("kill switch");
        } else {
            logger
                .audit_trade(i, i64::from(i), 100, u64::from(i))
                .expect("trade");
        }
    }
    logger.close();
    let segs = ksa_core::reader::list_segments(dir).expect("list");
    assert!(segs.len() >= 2, "want a full segment and a partial one");
    let first = std::fs::read(&segs[0].1).expect("read");
    let last = std::fs::read(&segs[segs.len() - 1].1).expect("read");
    (first, last)
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8"))
}

fn put_u64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// An open segment as a crash leaves it: CLOSED cleared and `committed` lagging behind the
/// records that are in the file.
fn as_open(closed: &[u8], committed: u64) -> Vec<u8> {
    let mut b = closed.to_vec();
    let flags =
        u32::from_le_bytes(b[off::FLAGS..off::FLAGS + 4].try_into().expect("4")) & !FLAG_CLOSED;
    b[off::FLAGS..off::FLAGS + 4].copy_from_slice(&flags.to_le_bytes());
    put_u64(&mut b, off::COMMITTED, committed);
    b
}

fn mutate(rng: &mut Rng, base: &[u8]) -> (Vec<u8>, &'static str) {
    let mut b = base.to_vec();
    let len = b.len() as u64;
    let what = match rng.below(9) {
        0 => {
            b.truncate(rng.below(len + 1) as usize);
            "truncate"
        }
        1 => {
            // 1..=3 bit flips anywhere (CRC-32C catches all of them inside one record)
            for _ in 0..=rng.below(3) {
                let at = rng.below(len) as usize;
                b[at] ^= 1 << rng.below(8);
            }
            "bit flips"
        }
        2 => {
            // one bit flip inside the header's fields
            let at = rng.below(208) as usize;
            b[at] ^= 1 << rng.below(8);
            "header bit flip"
        }
        3 => {
            for x in &mut b[8..HEADER_SIZE] {
                *x = rng.next() as u8;
            }
            "garbage header after the magic"
        }
        4 => {
            // keep magic, version and sizes; garbage in every other field
            for o in [
                off::SEGMENT_INDEX,
                off::FIRST_SEQ,
                off::CAPACITY,
                off::COMMITTED,
                off::CHAIN_RECORDS,
            ] {
                put_u64(&mut b, o, rng.next() >> rng.below(64));
            }
            b[off::FLAGS] = rng.next() as u8;
            "garbage header fields"
        }
        5 => {
            let v = 2 + rng.below(u64::from(u16::MAX) - 1) as u16;
            b[off::VERSION..off::VERSION + 2].copy_from_slice(&v.to_le_bytes());
            "wrong version"
        }
        6 => {
            let huge = [
                u64::MAX,
                u64::MAX / 64,
                1 << 40,
                u64_at(&b, off::CAPACITY) + 1,
            ];
            put_u64(&mut b, off::CAPACITY, huge[rng.below(4) as usize]);
            if rng.below(2) == 0 {
                put_u64(&mut b, off::COMMITTED, huge[rng.below(4) as usize]);
            }
            "huge capacity/committed"
        }
        7 => {
            // a zeroed or garbage run of records
            let from = HEADER_SIZE + rng.below((len as usize - HEADER_SIZE) as u64) as usize;
            let to = (from + rng.below(4096) as usize).min(b.len());
            let garbage = rng.below(2) == 0;
            for x in &mut b[from..to] {
                *x = if garbage { rng.next() as u8 } else { 0 };
            }
            "zeroed/garbage run"
        }
        _ => {
            // bytes appended past the end (a partial record, or more)
            for _ in 0..rng.below(200) {
                b.push(rng.next() as u8);
            }
            "appended bytes"
        }
    };
    (b, what)
}

/// Returns true when the parser accepted the input (`Ok`).
fn check_case(path: &Path, bytes: &[u8], original: &[Record], what: &str, case: usize) -> bool {
    std::fs::write(path, bytes).expect("write case");
    LARGEST.store(0, Ordering::Relaxed);
    let t = Instant::now();
    let result = read_segment(path);
    let elapsed = t.elapsed();
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        elapsed < Duration::from_secs(2),
        "case {case} ({what}): took {elapsed:?}"
    );
    // the reader's 1 MiB buffer plus the records vector, bounded by the file's size
    let bound = (1 << 20) + 2 * bytes.len() + 4096;
    assert!(
        largest <= bound,
        "case {case} ({what}): allocated {largest} bytes for a {}-byte file",
        bytes.len()
    );
    match result {
        Ok(seg) => {
            assert!(
                seg.records.len() <= original.len(),
                "case {case} ({what}): {} records from a file that had {}",
                seg.records.len(),
                original.len()
            );
            for (i, (got, want)) in seg.records.iter().zip(original).enumerate() {
                assert_eq!(
                    got, want,
                    "case {case} ({what}): record {i} is not the original"
                );
            }
            if let Some(torn) = seg.torn_at {
                assert!(
                    torn + RECORD_SIZE as u64 <= bytes.len() as u64,
                    "case {case}: torn offset outside the file"
                );
                assert_eq!(
                    torn,
                    (HEADER_SIZE + seg.records.len() * RECORD_SIZE) as u64,
                    "case {case}: torn offset"
                );
            }
            true
        }
        Err(ReadError::Corrupt { offset, .. }) => {
            assert!(
                offset <= bytes.len().max(HEADER_SIZE) as u64,
                "case {case} ({what}): offset {offset} outside the file"
            );
            false
        }
        Err(e @ ReadError::Io { .. }) => {
            panic!("case {case} ({what}): I/O error on a readable file: {e}")
        }
    }
}

fn run_cases(bases: &[(Vec<u8>, &str)], cases: usize, seed: u64, work: &Path) {
    let mut rng = Rng(seed);
    let case_path: PathBuf = work.join("case.seg");
    let originals: Vec<Vec<Record>> = bases
        .iter()
        .map(|(b, _)| {
            std::fs::write(&case_path, b).expect("write base");
            let seg = read_segment(&case_path).expect("a pristine segment reads");
            assert!(seg.torn_at.is_none());
            seg.records
        })
        .collect();
    let mut accepted = 0;
    for case in 0..cases {
        let which = rng.below(bases.len() as u64) as usize;
        let (bytes, what) = mutate(&mut rng, &bases[which].0);
        accepted += usize::from(check_case(
            &case_path,
            &bytes,
            &originals[which],
            what,
            case,
        ));
    }
    // the mutations must reach both outcomes, or the fuzzing proves little
    assert!(
        accepted > cases / 10 && cases - accepted > cases / 10,
        "{accepted} of {cases} accepted"
    );
}

#[test]
fn damaged_segments_read_to_the_damage_or_fail_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (full, last) = real_segments(&dir.path().join("log"));
    let full_records = (u64_at(&full, off::COMMITTED)) as usize;
    assert!(full_records > 100);
    let bases = vec![
        (full.clone(), "closed full segment"),
        (last.clone(), "closed last segment"),
        // a crashed writer's segment: committed lags, later records valid in the file
        (
            as_open(&full, full_records as u64 / 3),
            "open segment, committed lagging",
        ),
        (as_open(&last, 0), "open segment, nothing committed"),
    ];
    let cases = 4_000;
    run_cases(&bases, cases, 0x9E37_79B9_7F4A_7C15, dir.path());
}

#[test]
fn open_segment_reads_past_committed_and_reports_a_torn_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (full, _) = real_segments(&dir.path().join("log"));
    let n = u64_at(&full, off::COMMITTED) as usize;
    let mut open = as_open(&full, 10);
    // record 50 half written: its second half is zero
    let at = HEADER_SIZE + 50 * RECORD_SIZE;
    open[at + 32..at + RECORD_SIZE].fill(0);
    let path = dir.path().join("open.seg");
    std::fs::write(&path, &open).expect("write");
    let seg = read_segment(&path).expect("an open segment with a torn record reads");
    assert_eq!(
        seg.records.len(),
        50,
        "records past committed up to the torn one"
    );
    assert_eq!(seg.torn_at, Some(at as u64));
    assert!(n > 50);
}

#[test]
fn random_headers_never_panic() {
    let mut rng = Rng(0xDEAD_BEEF_CAFE_F00D);
    let dir = tempfile::tempdir().expect("tempdir");
    let (full, _) = real_segments(&dir.path().join("log"));
    let path = dir.path().join("h.seg");
    for case in 0..20_000 {
        let mut h = [0u8; HEADER_SIZE];
        h.copy_from_slice(&full[..HEADER_SIZE]);
        // a few random bytes anywhere in the first 208 (every field), sometimes all of them
        let n = if case % 10 == 0 {
            208
        } else {
            1 + rng.below(8) as usize
        };
        for _ in 0..n {
            h[rng.below(208) as usize] = rng.next() as u8;
        }
        let file_len = rng.next() >> rng.below(64);
        if let Ok(parsed) = parse_header(&path, &h, file_len) {
            let max_records = file_len.saturating_sub(HEADER_SIZE as u64) / RECORD_SIZE as u64;
            assert!(
                parsed.committed <= parsed.capacity && parsed.committed <= max_records,
                "case {case}"
            );
        }
    }
}
