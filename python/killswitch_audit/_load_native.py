"""Loads the compiled extension before anything else of the package, so that its absence is
one ImportError saying what is missing and how to build it (not Python's "partially
initialized module ... most likely due to a circular import" from a later import). There is
no pure-Python fallback: the rollback engine is `audit_system.engine: direct`, in the same
extension."""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
from pathlib import Path


def _require_native() -> None:
    here = Path(__file__).resolve().parent
    try:
        importlib.import_module(f"{__package__}._native")
    except ImportError as exc:
        found = sorted(p.name for p in here.glob("_native*") if p.suffix in (".so", ".pyd"))
        wanted = "_native" + importlib.machinery.EXTENSION_SUFFIXES[0]
        if found:
            what = (
                f"{here}/{', '.join(found)} is built for another Python or cannot be loaded "
                f"(this is Python {sys.version.split()[0]}, which loads {wanted}; {exc})"
            )
        else:
            what = f"the file {here}/_native*.so (the compiled Rust core) is missing"
        raise ImportError(
            f"killswitch_audit: {what}. Build it for this Python: `pip install .` in the "
            "source tree (needs a Rust toolchain; README, Install), or `maturin develop "
            "--release` in a virtual environment, or `cargo build --release -p "
            f"killswitch-audit-python` and copy target/release/lib_native.so to {here}/{wanted}.",
            name=f"{__package__}._native",
        ) from None


_require_native()
