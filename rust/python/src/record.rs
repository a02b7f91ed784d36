//! `Record`: one audit record as Python reads it back, a frozen native class.
//!
//! It is native, not a dataclass, because `read_audit_log` builds millions of them: a native
//! instance is one allocation holding the 64 decoded bytes, where a dataclass needed an
//! object and a dozen int objects each (the reader was capped near 1.5 M records/s by that).
//! Fields are converted to Python ints only when read. What the fields mean per kind, and
//! the enums `kind` and `reason_code` return, belong to `killswitch_audit.format`; this class
//! looks those enums up from there, once.
use ksa_core::record::{Record as Raw, CRC_COVERED, FLAG_EMERGENCY, RECORD_SIZE};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyDict, PyInt, PyTuple};

/// One 64-byte audit record as read back from a segment file.
///
/// `kind` is a `RecordKind` when the value is known, else the raw int. The properties name
/// the generic fields `a`, `b`, `c` and `code` after what they mean for a given kind.
/// `salvaged` (read with `salvage=True`): an intact record found *after* damage in its
/// segment; the records between it and the damage may be missing.
#[pyclass(
    module = "killswitch_audit",
    name = "Record",
    frozen,
    eq,
    hash,
    skip_from_py_object
)]
#[derive(PartialEq, Eq, Hash)]
pub struct PyRecord {
    raw: Raw,
    salvaged: bool,
}

impl PyRecord {
    /// The record stored in `b` (64 bytes; the CRC is not checked here).
    pub fn decode(b: &[u8], salvaged: bool) -> PyRecord {
        let bytes: &[u8; RECORD_SIZE] = b.try_into().expect("64-byte record");
        PyRecord {
            raw: Raw::from_bytes(bytes),
            salvaged,
        }
    }

    /// The 64 bytes with the stored CRC (not recomputed).
    fn bytes(&self) -> [u8; RECORD_SIZE] {
        self.raw.encode()
    }
}

/// `killswitch_audit.format`'s enums, looked up once: `kind_of(k)` for every kind byte and
/// the `KillSwitchReason` members by value.
struct Enums {
    kinds: Vec<Py<PyAny>>,
    reasons: Py<PyDict>,
}

static ENUMS: PyOnceLock<Enums> = PyOnceLock::new();

fn enums(py: Python<'_>) -> PyResult<&Enums> {
    ENUMS.get_or_try_init(py, || {
        let format = py.import("killswitch_audit.format")?;
        let kind_of = format.getattr("kind_of")?;
        let kinds = (0..=255u8)
            .map(|k| kind_of.call1((k,)).map(Bound::unbind))
            .collect::<PyResult<_>>()?;
        let reasons = format.getattr("_REASON_BY_VALUE")?.cast_into::<PyDict>()?;
        Ok(Enums {
            kinds,
            reasons: reasons.unbind(),
        })
    })
}

/// The fields, in the order of the constructor and of the record layout.
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

static DATETIME: PyOnceLock<(Py<PyAny>, Py<PyAny>)> = PyOnceLock::new();

#[pymethods]
impl PyRecord {
    #[new]
    #[pyo3(signature = (seq, wall_ns, mono_ns, kind, flags, code, thread_id, a, b, c, symbol_id, crc32c, salvaged=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        seq: u64,
        wall_ns: u64,
        mono_ns: u64,
        kind: u8,
        flags: u8,
        code: u16,
        thread_id: u32,
        a: i64,
        b: i64,
        c: u64,
        symbol_id: u32,
        crc32c: u32,
        salvaged: bool,
    ) -> PyRecord {
        PyRecord {
            raw: Raw {
                seq,
                wall_ns,
                mono_ns,
                kind,
                flags,
                code,
                thread_id,
                a,
                b,
                c,
                symbol_id,
                crc32c,
            },
            salvaged,
        }
    }

    /// Positional pattern matching (`case Record(seq, wall_ns, ...)`), as the dataclass had.
    #[classattr]
    fn __match_args__(py: Python<'_>) -> PyResult<Py<PyTuple>> {
        Ok(PyTuple::new(py, FIELDS)?.unbind())
    }

    /// `copy.replace(record, **changes)` (Python 3.13; `record.__replace__(...)` before): a
    /// new record with those fields changed (the CRC field is not recomputed).
    #[pyo3(signature = (**changes))]
    fn __replace__(
        slf: &Bound<'_, Self>,
        changes: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let (cls, args) = Self::__reduce__(slf)?;
        let Some(changes) = changes else {
            return Ok(cls.call1(args)?.unbind());
        };
        let kwargs = PyDict::new(py);
        for (name, value) in FIELDS.iter().zip(args.iter()) {
            kwargs.set_item(name, value)?;
        }
        for (k, v) in changes.iter() {
            let key: String = k.extract()?;
            if !FIELDS.contains(&key.as_str()) {
                return Err(PyTypeError::new_err(format!(
                    "Record has no field {key:?} (fields: {})",
                    FIELDS.join(", ")
                )));
            }
            kwargs.set_item(key, v)?;
        }
        Ok(cls.call((), Some(&kwargs))?.unbind())
    }

    #[getter]
    fn seq(&self) -> u64 {
        self.raw.seq
    }
    #[getter]
    fn wall_ns(&self) -> u64 {
        self.raw.wall_ns
    }
    #[getter]
    fn mono_ns(&self) -> u64 {
        self.raw.mono_ns
    }
    /// `RecordKind` when known, else the int (a newer writer's kind).
    #[getter]
    fn kind(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(enums(py)?.kinds[usize::from(self.raw.kind)].clone_ref(py))
    }
    #[getter]
    fn flags(&self) -> u8 {
        self.raw.flags
    }
    #[getter]
    fn code(&self) -> u16 {
        self.raw.code
    }
    #[getter]
    fn thread_id(&self) -> u32 {
        self.raw.thread_id
    }
    #[getter]
    fn a(&self) -> i64 {
        self.raw.a
    }
    #[getter]
    fn b(&self) -> i64 {
        self.raw.b
    }
    #[getter]
    fn c(&self) -> u64 {
        self.raw.c
    }
    #[getter]
    fn symbol_id(&self) -> u32 {
        self.raw.symbol_id
    }
    #[getter]
    fn crc32c(&self) -> u32 {
        self.raw.crc32c
    }
    #[getter]
    fn salvaged(&self) -> bool {
        self.salvaged
    }

    // --- kill switch
    /// Kill-switch reason (`code`), a `KillSwitchReason` when known.
    #[getter]
    fn reason_code(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let code = self.raw.code;
        match enums(py)?.reasons.bind(py).get_item(code)? {
            Some(r) => Ok(r.unbind()),
            None => Ok(code.into_pyobject(py)?.into_any().unbind()),
        }
    }
    #[getter]
    fn position_size(&self) -> i64 {
        self.raw.a
    }
    #[getter]
    fn pnl_cents(&self) -> i64 {
        self.raw.b
    }
    #[getter]
    fn scope_id(&self) -> u64 {
        self.raw.c
    }

    // --- trades and orders
    #[getter]
    fn quantity(&self) -> i64 {
        self.raw.a
    }
    #[getter]
    fn price_cents(&self) -> i64 {
        self.raw.b
    }
    #[getter]
    fn order_id(&self) -> u64 {
        self.raw.c
    }

    // --- GAP
    #[getter]
    fn first_lost_seq(&self) -> i64 {
        self.raw.a
    }
    #[getter]
    fn lost_count(&self) -> i64 {
        self.raw.b
    }
    #[getter]
    fn last_lost_seq(&self) -> u64 {
        self.raw.c
    }

    // --- flags and time
    /// Written by the flusher itself (GAP, CLOCK, SESSION_*).
    #[getter]
    fn is_system(&self) -> bool {
        self.raw.is_system()
    }
    /// Came through the emergency ring.
    #[getter]
    fn is_emergency(&self) -> bool {
        self.raw.flags & FLAG_EMERGENCY != 0
    }
    /// `wall_ns` as an aware UTC datetime (microsecond precision; `wall_ns` keeps ns).
    #[getter]
    fn wall_time<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (datetime, utc) = DATETIME.get_or_try_init(py, || {
            let m = py.import("datetime")?;
            let utc = m.getattr("timezone")?.getattr("utc")?;
            Ok::<_, PyErr>((m.getattr("datetime")?.unbind(), utc.unbind()))
        })?;
        let (s, ns) = (
            self.raw.wall_ns / 1_000_000_000,
            self.raw.wall_ns % 1_000_000_000,
        );
        let kw = PyDict::new(py);
        kw.set_item("tz", utc.bind(py))?;
        let t = datetime
            .bind(py)
            .call_method("fromtimestamp", (s,), Some(&kw))?;
        let kw = PyDict::new(py);
        kw.set_item("microsecond", ns / 1000)?;
        t.call_method("replace", (), Some(&kw))
    }
    /// The UTF-8 chunk of a TEXT record (NUL padding removed), None for other kinds.
    #[getter]
    fn text(&self) -> Option<String> {
        if self.raw.kind != ksa_core::record::kind::TEXT {
            return None;
        }
        let chunk = ksa_core::reader::render::text_chunk(&self.raw);
        Some(String::from_utf8_lossy(&chunk).into_owned())
    }
    /// Recompute the CRC (False for a torn record yielded with `include_torn=True`).
    #[getter]
    fn crc_ok(&self) -> bool {
        ksa_core::crc::crc32c(&self.bytes()[..CRC_COVERED]) == self.raw.crc32c
    }
    /// Bytes 0..60 of the record (what the CRC covers).
    fn body<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.bytes()[..CRC_COVERED])
    }
    /// The 64 bytes of the record, with its stored CRC (not recomputed).
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.bytes())
    }
    /// Plain dict of the fields (kind as its name when known), for JSON/CSV output.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let r = &self.raw;
        let d = PyDict::new(py);
        d.set_item("seq", r.seq)?;
        d.set_item("wall_ns", r.wall_ns)?;
        d.set_item("mono_ns", r.mono_ns)?;
        let kind = self.kind(py)?.into_bound(py);
        if kind.is_exact_instance_of::<PyInt>() {
            d.set_item("kind", kind)?;
        } else {
            d.set_item("kind", kind.getattr("name")?)?;
        }
        d.set_item("flags", r.flags)?;
        d.set_item("code", r.code)?;
        d.set_item("thread_id", r.thread_id)?;
        d.set_item("a", r.a)?;
        d.set_item("b", r.b)?;
        d.set_item("c", r.c)?;
        d.set_item("symbol_id", r.symbol_id)?;
        d.set_item("crc32c", r.crc32c)?;
        if self.salvaged {
            d.set_item("salvaged", true)?;
        }
        Ok(d)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let r = &self.raw;
        let kind = self.kind(py)?.into_bound(py).repr()?;
        let salvaged = if self.salvaged { "True" } else { "False" };
        Ok(format!(
            "Record(seq={}, wall_ns={}, mono_ns={}, kind={kind}, flags={}, code={}, \
             thread_id={}, a={}, b={}, c={}, symbol_id={}, crc32c={}, salvaged={salvaged})",
            r.seq,
            r.wall_ns,
            r.mono_ns,
            r.flags,
            r.code,
            r.thread_id,
            r.a,
            r.b,
            r.c,
            r.symbol_id,
            r.crc32c
        ))
    }

    /// Pickle and copy: rebuilt from its fields.
    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let py = slf.py();
        let me = slf.get();
        let r = &me.raw;
        let args = PyTuple::new(
            py,
            [
                r.seq.into_pyobject(py)?.into_any(),
                r.wall_ns.into_pyobject(py)?.into_any(),
                r.mono_ns.into_pyobject(py)?.into_any(),
                r.kind.into_pyobject(py)?.into_any(),
                r.flags.into_pyobject(py)?.into_any(),
                r.code.into_pyobject(py)?.into_any(),
                r.thread_id.into_pyobject(py)?.into_any(),
                r.a.into_pyobject(py)?.into_any(),
                r.b.into_pyobject(py)?.into_any(),
                r.c.into_pyobject(py)?.into_any(),
                r.symbol_id.into_pyobject(py)?.into_any(),
                r.crc32c.into_pyobject(py)?.into_any(),
                PyBool::new(py, me.salvaged).to_owned().into_any(),
            ],
        )?;
        Ok((slf.get_type().into_any(), args))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyRecord>()
}
