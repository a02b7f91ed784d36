//! PyO3 binding: argument extraction and error mapping, nothing else.
use pyo3::prelude::*;

mod control;
mod gate;
mod logger;
mod monitor;
mod reader;
mod record;

/// `killswitch_audit._native`: the compiled half of the package (private; import
/// `killswitch_audit` instead).
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    logger::register(m)?;
    monitor::register(m)?;
    gate::register(m)?;
    record::register(m)?;
    reader::register(m)?;
    control::register(m)?;
    Ok(())
}
