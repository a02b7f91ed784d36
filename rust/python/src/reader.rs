//! The reader for Python: argument conversion and error mapping around `ksa_core::reader`
//! (reading rules, verify and dump rendering all live in the core).
//!
//! `read_records` builds native [`Record`](crate::record::PyRecord)s: decoded without the
//! GIL, then put into one list.
use crate::record::PyRecord;
use ksa_core::reader::render::{Dump, Style};
use ksa_core::reader::verify::{verify_log, Report};
use ksa_core::reader::{
    scan_segment, walk_segment, ReadError, RecordSink, ScanOptions, SegmentHeader,
};
use ksa_core::record::RECORD_SIZE;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use std::path::{Path, PathBuf};

fn corrupt_error(py: Python<'_>, path: &Path, offset: u64, why: &str) -> PyErr {
    let make = || -> PyResult<PyErr> {
        let class = py
            .import("killswitch_audit.errors")?
            .getattr("AuditLogCorrupt")?;
        let kw = PyDict::new(py);
        kw.set_item("path", path.display().to_string())?;
        kw.set_item("offset", offset)?;
        Ok(PyErr::from_value(class.call((why,), Some(&kw))?))
    };
    make().unwrap_or_else(|e| e)
}

fn read_error(py: Python<'_>, e: ReadError) -> PyErr {
    match e {
        ReadError::Corrupt { path, offset, why } => corrupt_error(py, &path, offset, &why),
        ReadError::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(format!("no such audit log: {}", path.display()))
        }
        ReadError::Io { path, source } => {
            PyOSError::new_err(format!("{}: {source}", path.display()))
        }
    }
}

fn style_of(name: &str) -> PyResult<Style> {
    Ok(match name {
        "text" => Style::Text,
        "json" => Style::Json,
        "raw" => Style::Raw,
        "raw-json" => Style::RawJson,
        other => {
            return Err(PyValueError::new_err(format!(
                "style must be text, json, raw or raw-json, not {other:?}"
            )))
        }
    })
}

/// The records of a log (every segment, salvage as asked), in file order, with a salvaged
/// flag per record and the first damage that stopped or was skipped.
struct LogRecords {
    data: Vec<u8>,
    salvaged: Vec<bool>,
    damage: Option<(PathBuf, u64, String)>,
    /// The first torn tail (file, offset), skipped.
    torn: Option<(PathBuf, u64)>,
}

/// Appends a segment's records to a [`LogRecords`] as they are read.
struct Append<'a>(&'a mut LogRecords);

impl RecordSink for Append<'_> {
    fn header(&mut self, h: &SegmentHeader) {
        // committed records are the common case: one allocation, no regrowth copies
        let more = usize::try_from(h.committed.min(1 << 24)).unwrap_or(0) * RECORD_SIZE;
        self.0.data.reserve(more);
    }
    fn records(&mut self, recs: &[u8], salvaged: bool) {
        self.0.data.extend_from_slice(recs);
        let n = recs.len() / RECORD_SIZE;
        self.0.salvaged.resize(self.0.salvaged.len() + n, salvaged);
    }
}

fn read_log(path: &Path, salvage: bool) -> Result<LogRecords, ReadError> {
    let mut out = LogRecords {
        data: Vec::new(),
        salvaged: Vec::new(),
        damage: None,
        torn: None,
    };
    let segments = ksa_core::reader::log_segments(path)?;
    let (damage, torn) = read_segments(&segments, salvage, &mut Append(&mut out))?;
    out.damage = damage;
    out.torn = torn;
    Ok(out)
}

type Damage = Option<(PathBuf, u64, String)>;

/// Feeds the records of `segments` to `sink` by the reading rules; (first damage, first
/// torn tail). Without `salvage` it stops at the first damage.
fn read_segments(
    segments: &[PathBuf],
    salvage: bool,
    sink: &mut dyn RecordSink,
) -> Result<(Damage, Option<(PathBuf, u64)>), ReadError> {
    let opts = ScanOptions {
        salvage,
        check_slack: false,
    };
    let (mut damage, mut torn) = (None, None);
    for seg in segments {
        let scan = match walk_segment(seg, opts, sink) {
            Ok(s) => s,
            Err(ReadError::Corrupt { path, offset, why }) if salvage => {
                damage.get_or_insert((path, offset, why));
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Some(t) = scan.torn_at {
            torn.get_or_insert((seg.clone(), t));
        }
        if let Some(d) = scan.damage {
            damage.get_or_insert((seg.clone(), d.offset, d.why));
            if !salvage {
                break;
            }
        }
    }
    Ok((damage, torn))
}

/// Copies the records of `kinds` into a caller's buffer (the numpy bulk path).
struct Fill<'a> {
    dst: &'a mut [u8],
    count: usize,
    keep: Option<[bool; 256]>,
    salvaged: Vec<usize>,
    overflow: bool,
}

impl RecordSink for Fill<'_> {
    fn records(&mut self, recs: &[u8], salvaged: bool) {
        if self.keep.is_none() && !salvaged {
            // the common case: every record, in one copy
            let at = self.count * RECORD_SIZE;
            let Some(slots) = self.dst.get_mut(at..at + recs.len()) else {
                self.overflow = true;
                return;
            };
            slots.copy_from_slice(recs);
            self.count += recs.len() / RECORD_SIZE;
            return;
        }
        for r in recs.chunks_exact(RECORD_SIZE) {
            if !self.keep.is_none_or(|k| k[r[24] as usize]) {
                continue;
            }
            let at = self.count * RECORD_SIZE;
            let Some(slot) = self.dst.get_mut(at..at + RECORD_SIZE) else {
                self.overflow = true;
                return;
            };
            slot.copy_from_slice(r);
            if salvaged {
                self.salvaged.push(self.count);
            }
            self.count += 1;
        }
    }
}

/// Builds a `Record` for each record (of `keep` kinds) as it is read, while the chunk is in
/// cache. It holds the GIL while it reads (the files come from the page cache in 1 MiB
/// `pread`s): building as it goes saves a copy of every record through memory, a third of
/// the time it took to decode without the GIL first.
struct Decode<'py> {
    py: Python<'py>,
    out: Vec<Bound<'py, PyRecord>>,
    keep: Option<[bool; 256]>,
    failed: Option<PyErr>,
}

impl RecordSink for Decode<'_> {
    fn header(&mut self, h: &SegmentHeader) {
        if self.keep.is_none() {
            self.out
                .reserve(usize::try_from(h.committed.min(1 << 24)).unwrap_or(0));
        }
    }
    fn records(&mut self, recs: &[u8], salvaged: bool) {
        if self.failed.is_some() {
            return;
        }
        for r in recs.chunks_exact(RECORD_SIZE) {
            if !self.keep.is_none_or(|k| k[r[24] as usize]) {
                continue;
            }
            match Bound::new(self.py, PyRecord::decode(r, salvaged)) {
                Ok(obj) => self.out.push(obj),
                Err(e) => {
                    self.failed = Some(e);
                    return;
                }
            }
        }
    }
}

fn torn_pair(t: &Option<(PathBuf, u64)>) -> Option<(String, u64)> {
    t.as_ref().map(|(p, o)| (p.display().to_string(), *o))
}

fn kind_filter(kinds: Option<Vec<u8>>) -> Option<[bool; 256]> {
    kinds.map(|ks| {
        let mut keep = [false; 256];
        for k in ks {
            keep[k as usize] = true;
        }
        keep
    })
}

/// `(records, damage, torn)`: the records of the log at `path` (directory or one segment) in
/// file order, those of `kinds` only (None: all), as `Record`s. Without `salvage` reading
/// stops at the first damage; with it the intact records after damage come too, flagged
/// `salvaged`. `damage` is None or an `AuditLogCorrupt` naming the first bad file and offset;
/// `torn` None or (file, offset) of the first torn tail skipped.
#[pyfunction]
#[pyo3(signature = (path, kinds=None, salvage=false))]
fn read_records<'py>(
    py: Python<'py>,
    path: PathBuf,
    kinds: Option<Vec<u8>>,
    salvage: bool,
) -> PyResult<ReadRecords<'py>> {
    let mut sink = Decode {
        py,
        out: Vec::new(),
        keep: kind_filter(kinds),
        failed: None,
    };
    let segments = py
        .detach(|| ksa_core::reader::log_segments(&path))
        .map_err(|e| read_error(py, e))?;
    let (damage, torn) =
        read_segments(&segments, salvage, &mut sink).map_err(|e| read_error(py, e))?;
    if let Some(e) = sink.failed {
        return Err(e);
    }
    let list = PyList::new(py, sink.out)?;
    let damage = damage.map(|(p, o, why)| corrupt_error(py, &p, o, &why));
    Ok((list, damage, torn_pair(&torn)))
}

type ReadRecords<'py> = (Bound<'py, PyList>, Option<PyErr>, Option<(String, u64)>);

type ReadInto<'py> = (usize, Vec<usize>, Option<PyErr>, Option<(String, u64)>);

/// `(segments, slots)`: the segment files of the log at `path` and an upper bound of the
/// records they hold, to size the buffer `read_log_into` fills.
#[pyfunction]
fn log_slots(py: Python<'_>, path: PathBuf) -> PyResult<(Vec<PathBuf>, u64)> {
    py.detach(|| {
        let segs = ksa_core::reader::log_segments(&path)?;
        let slots = segs
            .iter()
            .map(|s| ksa_core::reader::segment_slots(s))
            .sum();
        Ok((segs, slots))
    })
    .map_err(|e| read_error(py, e))
}

/// `(count, salvaged_positions, damage, torn)`: the valid records of `segments` (of `kinds`
/// only) copied into `out`, a writable C-contiguous byte buffer (a numpy array's uint8
/// view), 64 bytes each, by the rules of `read_records`.
#[pyfunction]
#[pyo3(signature = (segments, out, kinds=None, salvage=false))]
fn read_log_into<'py>(
    py: Python<'py>,
    segments: Vec<PathBuf>,
    out: PyBuffer<u8>,
    kinds: Option<Vec<u8>>,
    salvage: bool,
) -> PyResult<ReadInto<'py>> {
    if out.readonly() || !out.is_c_contiguous() {
        return Err(PyValueError::new_err(
            "out must be a writable C-contiguous buffer",
        ));
    }
    let (ptr, len) = (out.buf_ptr() as usize, out.len_bytes());
    let keep = kind_filter(kinds);
    let res = py.detach(|| {
        // SAFETY: `out` (held until this function returns) exports `len` writable,
        // contiguous bytes at `ptr`; the buffer is the fresh array `read_audit_array` just
        // allocated and shares with no other thread, so nothing else touches it meanwhile.
        let dst = unsafe { std::slice::from_raw_parts_mut(ptr as *mut u8, len) };
        let mut fill = Fill {
            dst,
            count: 0,
            keep,
            salvaged: Vec::new(),
            overflow: false,
        };
        let (damage, torn) = read_segments(&segments, salvage, &mut fill)?;
        Ok::<_, ReadError>((fill.count, fill.salvaged, fill.overflow, damage, torn))
    });
    let (count, salvaged, overflow, damage, torn) = res.map_err(|e| read_error(py, e))?;
    if overflow {
        return Err(PyValueError::new_err(
            "the log grew while it was read (a segment changed its capacity): read it again",
        ));
    }
    let damage = damage.map(|(p, o, why)| corrupt_error(py, &p, o, &why));
    Ok((count, salvaged, damage, torn_pair(&torn)))
}

/// One segment by the reading rules, as a dict (header fields, `data` bytes of the intact
/// then salvaged records, `n_valid`, `torn_at`, `damage` (offset, why) or None, ...).
#[pyfunction]
#[pyo3(signature = (path, salvage=false, check_slack=false))]
fn scan_segment_file<'py>(
    py: Python<'py>,
    path: PathBuf,
    salvage: bool,
    check_slack: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = ScanOptions {
        salvage,
        check_slack,
    };
    let s = py
        .detach(|| scan_segment(&path, opts))
        .map_err(|e| read_error(py, e))?;
    let d = PyDict::new(py);
    let h = &s.header;
    d.set_item("segment_index", h.segment_index)?;
    d.set_item("first_seq", h.first_seq)?;
    d.set_item("created_wall_ns", h.created_wall_ns)?;
    d.set_item("pid", h.pid)?;
    d.set_item("flags", h.flags)?;
    d.set_item("capacity", h.capacity)?;
    d.set_item("committed", h.committed)?;
    d.set_item("chain_records", h.chain_records)?;
    d.set_item("chain_head", PyBytes::new(py, &h.chain_head))?;
    d.set_item("prev_chain", PyBytes::new(py, &h.prev_chain))?;
    d.set_item("host", &h.host)?;
    d.set_item("writer_chained", h.writer_chained)?;
    d.set_item("seq_reserved", h.seq_reserved)?;
    d.set_item("file_len", s.file_len)?;
    d.set_item("data", PyBytes::new(py, &s.data))?;
    d.set_item("n_valid", s.n_valid)?;
    d.set_item("salvaged_slots", s.salvaged_slots.clone())?;
    d.set_item("torn_at", s.torn_at)?;
    d.set_item(
        "damage",
        s.damage.as_ref().map(|d| (d.offset, d.why.clone())),
    )?;
    d.set_item("after_committed", s.after_committed)?;
    d.set_item("past_capacity", s.past_capacity)?;
    Ok(d)
}

fn report_dict<'py>(py: Python<'py>, r: Report) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("path", r.path)?;
    d.set_item("ok", r.ok)?;
    d.set_item("records", r.records)?;
    d.set_item("segments", r.segments)?;
    d.set_item("first_seq", r.first_seq)?;
    d.set_item("last_seq", r.last_seq)?;
    d.set_item("gaps_accounted", r.gaps_accounted)?;
    d.set_item("gap_records", r.gap_records)?;
    d.set_item("unaccounted_missing", r.unaccounted_missing)?;
    let losses: Vec<(Option<u64>, u64, u64)> = r
        .possible_loss
        .iter()
        .map(|l| (l.pid, l.from, l.to))
        .collect();
    d.set_item("possible_loss", losses)?;
    d.set_item("duplicates", r.duplicates)?;
    d.set_item("torn_tails", r.torn_tails)?;
    d.set_item("corrupt", r.corrupt)?;
    d.set_item("accounting_errors", r.accounting_errors)?;
    d.set_item("chain_ok", r.chain_ok)?;
    d.set_item("chain_errors", r.chain_errors)?;
    d.set_item("chain_head", r.chain_head.map(hex))?;
    d.set_item("keyed", r.keyed)?;
    let clock = PyList::empty(py);
    for p in r.clock {
        let c = PyDict::new(py);
        c.set_item("code", p.code)?;
        c.set_item("from_wall_ns", p.from_wall_ns)?;
        c.set_item("to_wall_ns", p.to_wall_ns)?;
        c.set_item("records", p.records)?;
        c.set_item("max_error_us", p.max_error_us)?;
        clock.append(c)?;
    }
    d.set_item("clock", clock)?;
    let sessions = PyList::empty(py);
    for s in r.sessions {
        let x = PyDict::new(py);
        x.set_item("pid", s.pid)?;
        x.set_item("first_seq", s.first_seq)?;
        x.set_item("start_wall_ns", s.start_wall_ns)?;
        x.set_item("end_wall_ns", s.end_wall_ns)?;
        x.set_item("records_written", s.records_written)?;
        x.set_item("dropped_main", s.dropped_main)?;
        x.set_item("dropped_emergency", s.dropped_emergency)?;
        x.set_item("ended", s.ended)?;
        x.set_item("last_seq", s.last_seq)?;
        x.set_item("seq_reserved", s.seq_reserved)?;
        sessions.append(x)?;
    }
    d.set_item("sessions", sessions)?;
    d.set_item("notes", r.notes)?;
    d.set_item("kinds", r.kinds)?;
    Ok(d)
}

fn hex(h: [u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// Verifies the log at `path` (see `ksa_core::reader::verify`); the report as a dict.
#[pyfunction]
#[pyo3(signature = (path, key=None))]
fn verify_audit_log<'py>(
    py: Python<'py>,
    path: PathBuf,
    key: Option<Vec<u8>>,
) -> PyResult<Bound<'py, PyDict>> {
    let r = py
        .detach(|| verify_log(&path, key.as_deref()))
        .map_err(|e| read_error(py, e))?;
    report_dict(py, r)
}

/// A log prepared for `dump` (see `ksa_core::reader::render`): the whole log is read first,
/// so damage raises here, before anything is printed (unless `salvage`).
#[pyclass(module = "killswitch_audit._native", frozen, name = "Dump")]
struct PyDump {
    inner: std::sync::Mutex<Dump>,
    #[pyo3(get)]
    header: Option<&'static str>,
    /// The damage skipped in salvage mode.
    damage: Option<(PathBuf, u64, String)>,
}

#[pymethods]
impl PyDump {
    #[new]
    #[pyo3(signature = (path, style="text", kinds=None, salvage=false))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        style: &str,
        kinds: Option<Vec<u8>>,
        salvage: bool,
    ) -> PyResult<Self> {
        let style = style_of(style)?;
        let recs = py
            .detach(|| read_log(&path, salvage))
            .map_err(|e| read_error(py, e))?;
        if let (false, Some((p, o, why))) = (salvage, &recs.damage) {
            return Err(corrupt_error(py, p, *o, why));
        }
        let dump = py.detach(|| Dump::new(&recs.data, &recs.salvaged, style, kinds.as_deref()));
        Ok(PyDump {
            header: dump.header(),
            inner: std::sync::Mutex::new(dump),
            damage: recs.damage,
        })
    }

    /// Up to `n` more lines, UTF-8 (empty when done): bytes, so the CLI writes them to the
    /// binary stdout without decoding and encoding 100 MB of text again.
    fn render<'py>(&self, py: Python<'py>, n: usize) -> Bound<'py, PyBytes> {
        let text = py.detach(|| {
            let mut d = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            d.render(n)
        });
        PyBytes::new(py, text.as_bytes())
    }

    /// The first damage skipped in salvage mode, as an `AuditLogCorrupt`, or None.
    #[getter]
    fn damage(&self, py: Python<'_>) -> Option<PyErr> {
        self.damage
            .as_ref()
            .map(|(p, o, why)| corrupt_error(py, p, *o, why))
    }
}

/// Lines of raw 64-byte `data` rendered in file order (for `dump --follow`).
#[pyfunction]
#[pyo3(signature = (data, style="raw", kinds=None))]
fn render_records(data: &[u8], style: &str, kinds: Option<Vec<u8>>) -> PyResult<String> {
    let style = style_of(style)?;
    let n = data.len() / RECORD_SIZE;
    let mut d = Dump::new(&data[..n * RECORD_SIZE], &[], style, kinds.as_deref());
    Ok(d.render(n))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(read_records, m)?)?;
    m.add_class::<PyDump>()?;
    m.add_function(wrap_pyfunction!(log_slots, m)?)?;
    m.add_function(wrap_pyfunction!(read_log_into, m)?)?;
    m.add_function(wrap_pyfunction!(scan_segment_file, m)?)?;
    m.add_function(wrap_pyfunction!(verify_audit_log, m)?)?;
    m.add_function(wrap_pyfunction!(render_records, m)?)?;
    Ok(())
}
