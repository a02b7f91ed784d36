//! Scanning one segment file by the reading rules of the [module](super) doc: the chunked
//! `pread` walk ([`walk_segment`]) every reader goes through, its record sink, salvage and
//! the torn tail of an open segment.
use super::*;

/// True when the 64 bytes are a record: CRC valid and not all zero.
#[inline]
pub fn record_ok(b: &[u8]) -> bool {
    crate::crc::record_crc_matches(b) && b.iter().any(|&x| x != 0)
}

/// The first place a scan found damage (records before it are intact).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Byte offset in the file.
    pub offset: u64,
    /// What is wrong.
    pub why: String,
}

/// How to scan.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanOptions {
    /// After damage, keep the intact records that follow (flagged as salvaged).
    pub salvage: bool,
    /// Also look at the bytes after `committed` of a closed segment and past `capacity`
    /// (verify does; readers do not need to).
    pub check_slack: bool,
}

/// One segment after applying the reading rules.
#[derive(Debug)]
pub struct Scan {
    /// File.
    pub path: PathBuf,
    /// Its length in bytes.
    pub file_len: u64,
    /// Header.
    pub header: SegmentHeader,
    /// Bytes of the intact records `[0, n_valid)`, then of the salvaged ones.
    pub data: Vec<u8>,
    /// Intact records before any damage or torn record.
    pub n_valid: usize,
    /// Slot index of each salvaged record (`data` after `n_valid`), salvage mode only.
    pub salvaged_slots: Vec<u64>,
    /// Byte offset of a torn record right after the valid ones (open segments).
    pub torn_at: Option<u64>,
    /// The first damage: a bad committed record, a truncated file, a misnamed file.
    pub damage: Option<Damage>,
    /// CLOSED segment: (offset of the first, count of, count with a valid CRC of) non-zero
    /// record slots at or after `committed` (never read as records). `check_slack` only.
    pub after_committed: Option<(u64, u64, u64)>,
    /// (offset, length) of bytes past `capacity` (appended to the file). `check_slack` only.
    pub past_capacity: Option<(u64, u64)>,
}

impl Scan {
    /// The intact records' bytes.
    pub fn valid_bytes(&self) -> &[u8] {
        &self.data[..self.n_valid * RECORD_SIZE]
    }
    /// Number of records held (intact + salvaged).
    pub fn len(&self) -> usize {
        self.data.len() / RECORD_SIZE
    }
    /// True when no record was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// The first record of `data` that is not [`record_ok`] (an all-zero record fails its CRC).
fn first_bad(data: &[u8]) -> Option<usize> {
    crate::crc::first_record_mismatch(data)
}

/// Receives a segment's records as [`walk_segment`] reads them, chunk by chunk, while the
/// chunk is still in cache (verify hashes and accounts in the same pass).
pub trait RecordSink {
    /// The header, before any record.
    fn header(&mut self, _h: &SegmentHeader) {}
    /// Whole 64-byte records in file order; `salvaged` for intact records after damage.
    fn records(&mut self, recs: &[u8], salvaged: bool);
}

struct Collect<'a>(&'a mut Vec<u8>);

impl RecordSink for Collect<'_> {
    fn records(&mut self, recs: &[u8], _salvaged: bool) {
        self.0.extend_from_slice(recs);
    }
}

/// Records read per `pread` (1 MiB: stays in cache while it is checked and hashed).
const CHUNK: u64 = 16_384;

/// Reads one segment file by the reading rules into [`Scan::data`]. `Err` only when the
/// header is unusable or the file cannot be read; damage to records is in [`Scan::damage`].
pub fn scan_segment(path: &Path, opts: ScanOptions) -> Result<Scan, ReadError> {
    let mut data = Vec::new();
    let mut scan = walk_segment(path, opts, &mut Collect(&mut data))?;
    scan.data = data;
    Ok(scan)
}

/// [`scan_segment`] without keeping the records: they go to `sink` (`Scan::data` is empty).
pub fn walk_segment(
    path: &Path,
    opts: ScanOptions,
    sink: &mut dyn RecordSink,
) -> Result<Scan, ReadError> {
    let io_err = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let file_len = file.metadata().map_err(io_err)?.len();
    if file_len < HDR {
        return Err(corrupt(
            path,
            file_len,
            format!("file is {file_len} bytes, shorter than the {HEADER_SIZE}-byte segment header"),
        ));
    }
    let mut h = [0u8; HEADER_SIZE];
    file.read_exact_at(&mut h, 0).map_err(io_err)?;
    let header = decode_header(path, &h)?;
    sink.header(&header);
    let mut scan = Scan {
        path: path.to_path_buf(),
        file_len,
        data: Vec::new(),
        n_valid: 0,
        salvaged_slots: Vec::new(),
        torn_at: None,
        damage: None,
        after_committed: None,
        past_capacity: None,
        header,
    };
    let h = &scan.header;
    if let Some(named) = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_segment_name)
    {
        if named != h.segment_index {
            scan.damage = Some(Damage {
                offset: off::SEGMENT_INDEX as u64,
                why: format!(
                    "header says segment {} but the file is named for segment {named}",
                    h.segment_index
                ),
            });
            return Ok(scan);
        }
    }
    let available = (file_len - HDR) / REC;
    let limit = h.capacity.min(available);
    let committed = h.committed.min(available);
    let (closed, capacity, declared) = (h.is_closed(), h.capacity, h.committed);
    let mut rd = Chunks {
        file,
        path,
        buf: vec![0u8; (CHUNK * REC) as usize],
    };
    // [0, committed): all must be valid
    let mut at = 0u64;
    let mut bad: Option<u64> = None;
    while at < committed && (bad.is_none() || opts.salvage) {
        let n = (committed - at).min(CHUNK);
        let chunk = rd.read(at, n)?;
        if bad.is_none() {
            match first_bad(chunk) {
                None => {
                    sink.records(chunk, false);
                    at += n;
                    continue;
                }
                Some(i) => {
                    sink.records(&chunk[..i * RECORD_SIZE], false);
                    let slot = at + i as u64;
                    let rec = &chunk[i * RECORD_SIZE..(i + 1) * RECORD_SIZE];
                    let what = if rec.iter().all(|&b| b == 0) {
                        "is all zero"
                    } else {
                        "fails its CRC-32C check"
                    };
                    scan.damage = Some(Damage {
                        offset: HDR + slot * REC,
                        why: format!("record {slot} (below committed={declared}) {what}"),
                    });
                    bad = Some(slot);
                    if opts.salvage {
                        salvage_chunk(&mut scan.salvaged_slots, sink, chunk, at, slot + 1);
                    }
                }
            }
        } else {
            salvage_chunk(&mut scan.salvaged_slots, sink, chunk, at, at);
        }
        at += n;
    }
    scan.n_valid = bad.unwrap_or(committed) as usize;
    if bad.is_none() {
        if declared > available {
            scan.damage = Some(Damage {
                offset: HDR + available * REC,
                why: format!(
                    "file truncated: committed={declared} records but the file holds only \
                     {available} ({file_len} bytes)"
                ),
            });
        } else if !closed {
            walk_tail(&mut scan, sink, &mut rd, committed, limit, opts.salvage)?;
        }
    }
    if opts.check_slack {
        if closed && committed < limit {
            let mut at = committed;
            let mut first: Option<u64> = None;
            let (mut nonzero, mut valid) = (0u64, 0u64);
            while at < limit {
                // what the filesystem reports as a hole or unwritten reads as zeros: skip it
                match rd.next_data(HDR + at * REC) {
                    None => break,
                    Some(p) => at = at.max((p - HDR) / REC),
                }
                if at >= limit {
                    break;
                }
                let n = (limit - at).min(CHUNK);
                let chunk = rd.read(at, n)?;
                if chunk.iter().all(|&b| b == 0) {
                    at += n;
                    continue;
                }
                for (i, r) in chunk.chunks_exact(RECORD_SIZE).enumerate() {
                    if r.iter().any(|&b| b != 0) {
                        nonzero += 1;
                        valid += u64::from(record_ok(r));
                        first.get_or_insert(HDR + (at + i as u64) * REC);
                    }
                }
                at += n;
            }
            scan.after_committed = first.map(|o| (o, nonzero, valid));
        }
        let end = HDR + capacity.saturating_mul(REC);
        if file_len > end {
            scan.past_capacity = Some((end, file_len - end));
        }
    }
    Ok(scan)
}

/// One reused buffer of [`CHUNK`] records and the file it reads.
struct Chunks<'a> {
    file: File,
    path: &'a Path,
    buf: Vec<u8>,
}

impl Chunks<'_> {
    /// The first offset `>= from` that may hold data (`lseek(SEEK_DATA)`): None when the
    /// rest of the file is a hole or unwritten (zeros); `Some(from)` when the filesystem
    /// cannot tell.
    fn next_data(&self, from: u64) -> Option<u64> {
        use std::os::fd::AsRawFd;
        let Ok(off) = libc::off_t::try_from(from) else {
            return Some(from);
        };
        // SAFETY: plain syscall on an fd we own; it only moves that fd's offset, which the
        // positioned reads (`pread`) of this reader never use.
        let pos = unsafe { libc::lseek(self.file.as_raw_fd(), off, libc::SEEK_DATA) };
        if pos >= 0 {
            return Some((pos as u64).max(from));
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::ENXIO) => None,
            _ => Some(from),
        }
    }

    /// Records `[from, from + count)` (`count <= CHUNK`).
    fn read(&mut self, from: u64, count: u64) -> Result<&[u8], ReadError> {
        let b = &mut self.buf[..(count * REC) as usize];
        self.file
            .read_exact_at(b, HDR + from * REC)
            .map_err(|source| ReadError::Io {
                path: self.path.to_path_buf(),
                source,
            })?;
        Ok(b)
    }
}

/// Salvage mode: the intact records of `chunk` (first slot `at`) from slot `from` on.
fn salvage_chunk(
    slots: &mut Vec<u64>,
    sink: &mut dyn RecordSink,
    chunk: &[u8],
    at: u64,
    from: u64,
) {
    let skip = (from - at) as usize;
    for (i, r) in chunk.chunks_exact(RECORD_SIZE).enumerate().skip(skip) {
        if record_ok(r) {
            sink.records(r, true);
            slots.push(at + i as u64);
        }
    }
}

/// Reads past `committed` of an open segment: records while valid; the first bad non-zero
/// one is torn. With `salvage`, valid records after a torn one are kept (up to a zero slot).
fn walk_tail(
    scan: &mut Scan,
    sink: &mut dyn RecordSink,
    rd: &mut Chunks<'_>,
    from: u64,
    limit: u64,
    salvage: bool,
) -> Result<(), ReadError> {
    let mut at = from;
    let mut chunk_len = 256u64;
    let mut torn = false;
    while at < limit {
        let n = (limit - at).min(chunk_len);
        let chunk = rd.read(at, n)?;
        for (i, r) in chunk.chunks_exact(RECORD_SIZE).enumerate() {
            let slot = at + i as u64;
            if r.iter().all(|&b| b == 0) {
                return Ok(());
            }
            if record_ok(r) {
                sink.records(r, torn);
                if torn {
                    scan.salvaged_slots.push(slot);
                } else {
                    scan.n_valid += 1;
                }
            } else if !torn {
                scan.torn_at = Some(HDR + slot * REC);
                if !salvage {
                    return Ok(());
                }
                torn = true;
            }
        }
        at += n;
        chunk_len = (chunk_len * 2).min(CHUNK);
    }
    Ok(())
}
