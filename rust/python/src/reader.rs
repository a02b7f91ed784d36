//! The reader for Python: argument conversion and error mapping around `ksa_core::reader`
//! (reading rules, verify and dump rendering all live in the core).
//!
//! One piece is more than conversion: [`RecordMaker`] builds the package's frozen, slotted
//! `Record` dataclass directly (allocate, store the 13 slots) instead of calling its
//! `__init__`, which goes through `object.__setattr__` per field and would cap
//! `read_audit_log` at about a million records per second. It checks at construction that the
//! class really is a plain slotted class with those member slots, and falls back to calling
//! the class otherwise.
use ksa_core::reader::render::{Dump, Style};
use ksa_core::reader::verify::{verify_log, Report};
use ksa_core::reader::{
    scan_segment, walk_segment, ReadError, RecordSink, ScanOptions, SegmentHeader,
};
use ksa_core::record::RECORD_SIZE;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyList, PyTuple, PyType};
use std::path::{Path, PathBuf};

/// `Record` fields in slot order (docs/FORMAT.md, then the reader's `salvaged` flag).
const FIELDS: [&str; 13] = [
    "seq",
    "wall_ns",
    "mono_ns",
    "kind",
    "flags",
    "code",
    "thread_id",
    "a",
    "b",
    "c",
    "symbol_id",
    "crc32c",
    "salvaged",
];

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

/// Builds `Record` instances (see the module doc).
#[pyclass(module = "killswitch_audit._native", frozen)]
struct RecordMaker {
    class: Py<PyType>,
    /// Byte offset of each of [`FIELDS`] in an instance, when the fast path is usable.
    offsets: Option<[isize; 13]>,
    /// `RecordKind` member (or int) for each kind byte.
    kinds: Vec<Py<PyAny>>,
}

/// Slot offsets of `class` when it is a plain slotted class holding exactly object slots
/// named [`FIELDS`].
fn slot_offsets(class: &Bound<'_, PyType>) -> Option<[isize; 13]> {
    let tp = class.as_ptr().cast::<ffi::PyTypeObject>();
    // SAFETY: `class` is a live type object; we only read plain fields of it.
    let (basic, item, dictoff) =
        unsafe { ((*tp).tp_basicsize, (*tp).tp_itemsize, (*tp).tp_dictoffset) };
    // exactly the 13 slots after the object header: a field added to `Record` and not here
    // (left NULL) takes the slow path instead
    let exact = std::mem::size_of::<ffi::PyObject>()
        + FIELDS.len() * std::mem::size_of::<*mut ffi::PyObject>();
    if item != 0 || dictoff != 0 || usize::try_from(basic).ok() != Some(exact) {
        return None;
    }
    let dict = class.getattr("__dict__").ok()?;
    let mut offsets = [0isize; 13];
    for (slot, name) in offsets.iter_mut().zip(FIELDS) {
        let descr = dict.get_item(name).ok()?;
        // SAFETY: reading the type pointer of a live object.
        let is_member = unsafe {
            ffi::Py_TYPE(descr.as_ptr()) == std::ptr::addr_of_mut!(ffi::PyMemberDescr_Type)
        };
        if !is_member {
            return None;
        }
        // SAFETY: `descr` is a member descriptor (checked above), whose layout is
        // PyMemberDescrObject with a pointer to the PyMemberDef it serves.
        let def = unsafe {
            let d = descr.as_ptr().cast::<ffi::PyMemberDescrObject>();
            &*((*d).d_member.cast::<ffi::PyMemberDef>())
        };
        let size = std::mem::size_of::<*mut ffi::PyObject>() as isize;
        if def.type_code != ffi::Py_T_OBJECT_EX
            || def.flags & ffi::Py_READONLY != 0
            || def.offset < size
            || def.offset + size > basic
        {
            return None;
        }
        *slot = def.offset;
    }
    Some(offsets)
}

impl RecordMaker {
    fn make<'py>(&self, py: Python<'py>, r: &[u8], salvaged: bool) -> PyResult<Bound<'py, PyAny>> {
        let u64_at = |o: usize| u64::from_le_bytes(r[o..o + 8].try_into().expect("8"));
        let u32_at = |o: usize| u32::from_le_bytes(r[o..o + 4].try_into().expect("4"));
        let kind = self.kinds[r[24] as usize].clone_ref(py);
        let code = u16::from_le_bytes([r[26], r[27]]);
        let Some(offsets) = &self.offsets else {
            let args = PyTuple::new(
                py,
                [
                    u64_at(0).into_pyobject(py)?.into_any(),
                    u64_at(8).into_pyobject(py)?.into_any(),
                    u64_at(16).into_pyobject(py)?.into_any(),
                    kind.into_bound(py),
                    r[25].into_pyobject(py)?.into_any(),
                    code.into_pyobject(py)?.into_any(),
                    u32_at(28).into_pyobject(py)?.into_any(),
                    (u64_at(32) as i64).into_pyobject(py)?.into_any(),
                    (u64_at(40) as i64).into_pyobject(py)?.into_any(),
                    u64_at(48).into_pyobject(py)?.into_any(),
                    u32_at(56).into_pyobject(py)?.into_any(),
                    u32_at(60).into_pyobject(py)?.into_any(),
                    PyBool::new(py, salvaged).to_owned().into_any(),
                ],
            )?;
            return self.class.bind(py).call1(args);
        };
        // SAFETY: `slot_offsets` checked that the type is a plain slotted class whose 13
        // object slots lie inside the instance at `offsets`. `tp_alloc` returns a zeroed
        // instance (every slot NULL, which its traverse/dealloc accept), and each slot is
        // stored exactly once with a new (owned) reference. A NULL from PyLong_* (no memory)
        // is caught below, after which the partially filled instance is released normally.
        unsafe {
            let tp = self.class.as_ptr().cast::<ffi::PyTypeObject>();
            let alloc = (*tp).tp_alloc.unwrap_or(ffi::PyType_GenericAlloc);
            let obj = Bound::from_owned_ptr_or_err(py, alloc(tp, 0))?;
            let base = obj.as_ptr().cast::<u8>();
            let values: [*mut ffi::PyObject; 13] = [
                ffi::PyLong_FromUnsignedLongLong(u64_at(0)),
                ffi::PyLong_FromUnsignedLongLong(u64_at(8)),
                ffi::PyLong_FromUnsignedLongLong(u64_at(16)),
                kind.into_ptr(),
                ffi::PyLong_FromLong(r[25].into()),
                ffi::PyLong_FromLong(code.into()),
                ffi::PyLong_FromLongLong(u32_at(28).into()),
                ffi::PyLong_FromLongLong(u64_at(32) as i64),
                ffi::PyLong_FromLongLong(u64_at(40) as i64),
                ffi::PyLong_FromUnsignedLongLong(u64_at(48)),
                ffi::PyLong_FromLongLong(u32_at(56).into()),
                ffi::PyLong_FromLongLong(u32_at(60).into()),
                ffi::PyBool_FromLong(salvaged.into()),
            ];
            let mut failed = false;
            for (off, v) in offsets.iter().zip(values) {
                failed |= v.is_null();
                *base.offset(*off).cast::<*mut ffi::PyObject>() = v;
            }
            if failed {
                return Err(PyErr::fetch(py));
            }
            // A Record holds only ints, a bool and a RecordKind member: it cannot be part of
            // a reference cycle, so the cyclic GC need not track it (CPython untracks tuples
            // of atomic values for the same reason). Tracked, a million Records make the
            // collector rescan them over and over: 4x slower reading.
            if ffi::PyType_IS_GC(tp) != 0 {
                ffi::PyObject_GC_UnTrack(obj.as_ptr().cast());
            }
            Ok(obj)
        }
    }

    fn build<'py>(
        &self,
        py: Python<'py>,
        recs: &LogRecords,
        keep: Option<[bool; 256]>,
    ) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for (r, &salvaged) in recs.data.chunks_exact(RECORD_SIZE).zip(&recs.salvaged) {
            if keep.is_none_or(|k| k[r[24] as usize]) {
                list.append(self.make(py, r, salvaged)?)?;
            }
        }
        Ok(list)
    }
}

#[pymethods]
impl RecordMaker {
    /// `RecordMaker(record_class, kinds)`: `kinds[k]` is what a record's `kind` byte `k` becomes.
    #[new]
    fn new(record_class: Bound<'_, PyType>, kinds: Vec<Py<PyAny>>) -> PyResult<Self> {
        if kinds.len() != 256 {
            return Err(PyValueError::new_err("kinds must have 256 entries"));
        }
        Ok(RecordMaker {
            offsets: slot_offsets(&record_class),
            class: record_class.unbind(),
            kinds,
        })
    }

    /// True when records are built by the fast path.
    #[getter]
    fn fast(&self) -> bool {
        self.offsets.is_some()
    }

    /// `(records, damage, torn)`: the records of the log at `path` (directory or one segment) in
    /// file order, those of `kinds` only (None: all). Without `salvage` reading stops at the
    /// first damage; with it the intact records after damage come too, flagged `salvaged`.
    /// `damage` is None or an `AuditLogCorrupt` naming the first bad file and offset; `torn`
    /// None or (file, offset) of the first torn tail skipped.
    #[pyo3(signature = (path, kinds=None, salvage=false))]
    fn read<'py>(
        &self,
        py: Python<'py>,
        path: PathBuf,
        kinds: Option<Vec<u8>>,
        salvage: bool,
    ) -> PyResult<ReadRecords<'py>> {
        let recs = py
            .detach(|| read_log(&path, salvage))
            .map_err(|e| read_error(py, e))?;
        let list = self.build(py, &recs, kind_filter(kinds))?;
        let damage = recs
            .damage
            .map(|(p, o, why)| corrupt_error(py, &p, o, &why));
        Ok((list, damage, torn_pair(&recs.torn)))
    }
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
/// view), 64 bytes each, by the rules of `RecordMaker.read`.
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
    m.add_class::<RecordMaker>()?;
    m.add_class::<PyDump>()?;
    m.add_function(wrap_pyfunction!(log_slots, m)?)?;
    m.add_function(wrap_pyfunction!(read_log_into, m)?)?;
    m.add_function(wrap_pyfunction!(scan_segment_file, m)?)?;
    m.add_function(wrap_pyfunction!(verify_audit_log, m)?)?;
    m.add_function(wrap_pyfunction!(render_records, m)?)?;
    Ok(())
}
