//! The flusher's work per record (encode, `pwrite` through the segment writer, chain) next
//! to a plain memcpy into a mapping, with the segments it rolls through.
use crate::common::{drain_dir, entry, quick};
use criterion::{Criterion, Throughput};
use ksa_core::clock::Calibration;
use ksa_core::record::{Record, RECORD_SIZE};
use ksa_core::ring::{Entry, Ring};
use ksa_core::segment::{ChainWriter, PreparedSegment, SegmentWriter};
use memmap2::MmapOptions;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Records per iteration in the drain benches (4 MiB).
pub(crate) const DRAIN: usize = 1 << 16;
/// Slots per segment in the drain benches (64 MiB, as the default config).
const SEGMENT_RECORDS: u64 = 1 << 20;

/// A segment writer and its chain writer, rolling to a fresh file (untimed) when full.
pub(crate) struct Segments {
    dir: tempfile::TempDir,
    index: u64,
    current: Option<(SegmentWriter, ChainWriter)>,
}

impl Segments {
    pub(crate) fn new() -> Segments {
        let dir = tempfile::Builder::new()
            .prefix("ksa-bench-")
            .tempdir_in(drain_dir())
            .expect("tempdir");
        Segments {
            dir,
            index: 0,
            current: None,
        }
    }

    /// The writers of a segment with room for `n` more records.
    pub(crate) fn room(&mut self, n: usize) -> (&mut SegmentWriter, &mut ChainWriter) {
        let full = match &self.current {
            Some((w, _)) => w.remaining() < n as u64,
            None => true,
        };
        if full {
            if let Some((old, chain)) = self.current.take() {
                let path = old.path().to_path_buf();
                old.finish().expect("finish");
                let _ = chain.seal();
                let _ = std::fs::remove_file(path);
            }
            let p = PreparedSegment::create(self.dir.path(), self.index, SEGMENT_RECORDS)
                .expect("segment");
            let w = p.activate(0, u64::MAX, &[0; 32], None).expect("activate");
            let chain = ChainWriter::open(w.path(), &[0; 32], None).expect("chain writer");
            self.current = Some((w, chain));
            self.index += 1;
        }
        let (w, c) = self.current.as_mut().expect("writer");
        (w, c)
    }
}

pub(crate) fn to_record(cal: &Calibration, e: &Entry) -> Record {
    let (mono_ns, wall_ns) = cal.to_ns(e.ticks);
    Record::from_entry(e, mono_ns, wall_ns)
}

/// The flusher's work per record, and its parts, next to a plain memcpy into a mapping.
pub(crate) fn drain(c: &mut Criterion) {
    let mut g = c.benchmark_group("drain_into_mmap_segment");
    g.warm_up_time(Duration::from_millis(300));
    g.measurement_time(Duration::from_secs(1));
    g.sample_size(10);
    g.throughput(Throughput::ElementsAndBytes {
        elements: DRAIN as u64,
        bytes: (DRAIN * RECORD_SIZE) as u64,
    });
    let cal = Calibration::new();
    let encoded: Vec<[u8; RECORD_SIZE]> = (0..DRAIN as u64)
        .map(|i| to_record(&cal, &entry(i)).to_bytes())
        .collect();
    let flat: Vec<u8> = encoded.iter().flatten().copied().collect();

    // The limit: one memcpy of the batch into a populated, fully allocated shared file mapping.
    {
        let dir = tempfile::Builder::new()
            .prefix("ksa-bench-")
            .tempdir_in(drain_dir())
            .expect("tempdir");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("memcpy.bin"))
            .expect("file");
        let len = (SEGMENT_RECORDS as usize) * RECORD_SIZE;
        ksa_core::segment::allocate(&file, len as u64).expect("allocate");
        // SAFETY: a private temporary file, fully allocated, that nothing else maps or truncates.
        let mut map =
            unsafe { MmapOptions::new().len(len).populate().map_mut(&file) }.expect("mmap");
        let mut at = 0usize;
        g.bench_function("memcpy_limit", |b| {
            b.iter(|| {
                if at + flat.len() > len {
                    at = 0;
                }
                map[at..at + flat.len()].copy_from_slice(black_box(&flat));
                at += flat.len();
            })
        });
    }

    // SegmentWriter::append of records already encoded (no CRC, no chain).
    let mut segs = Segments::new();
    g.bench_function("segment_append_encoded", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (w, _) = segs.room(DRAIN);
                let t = Instant::now();
                for r in &encoded {
                    w.append(black_box(r));
                }
                total += t.elapsed();
            }
            total
        })
    });

    // As the flusher does it: ring drain, ticks -> ns, encode + CRC-32C, append, commit.
    let ring = Ring::new(DRAIN);
    let mut consumer = ring.consumer().expect("consumer");
    let fill = |ring: &Ring| {
        for i in 0..DRAIN as u64 {
            ring.try_push(&entry(i)).expect("room");
        }
    };
    g.bench_function("flusher_ring_drain_crc_append_commit", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                fill(&ring);
                let (w, _) = segs.room(DRAIN);
                let t = Instant::now();
                let n = consumer.drain(DRAIN, |e| {
                    w.append(&to_record(&cal, e).to_bytes());
                });
                w.commit().expect("commit");
                total += t.elapsed();
                assert_eq!(n, DRAIN);
            }
            total
        })
    });

    // The chainer thread's share (it runs beside the flusher): SHA-256 over the records the
    // flusher committed, read back with pread, and the chain head published.
    g.bench_function("chainer_sha256_catch_up", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (w, chain) = segs.room(DRAIN);
                chain.catch_up(); // what the other benches committed, untimed
                for r in &encoded {
                    w.append(r);
                }
                w.commit().expect("commit");
                let t = Instant::now();
                let n = chain.catch_up();
                total += t.elapsed();
                assert_eq!(n, DRAIN as u64);
            }
            total
        })
    });
    g.finish();

    // The parts on their own, per record.
    let mut g = c.benchmark_group("drain_parts_per_record");
    quick(&mut g);
    g.throughput(Throughput::Elements(1));
    let rec = to_record(&cal, &entry(9));
    g.bench_function("encode_with_crc32c", |b| {
        b.iter(|| black_box(black_box(&rec).to_bytes()))
    });
    let mut chain = ksa_core::chain::Chain::start(None, &[0; 32], 0);
    g.bench_function("sha256_chain_update_64B", |b| {
        b.iter(|| chain.update(black_box(&flat[..RECORD_SIZE])))
    });
    g.finish();
}
