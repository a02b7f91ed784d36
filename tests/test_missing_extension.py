"""Without its compiled extension the package does not import, and says why (issue 17 point 2:
before, a missing `_native*.so` showed as Python's "partially initialized module ... circular
import" warning and a silent pure-Python fallback). A copy of the package without the .so, or
with one built for another Python, in a fresh interpreter."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import killswitch_audit


def _import_copy(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "import killswitch_audit"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _copy_without_extension(tmp_path: Path) -> Path:
    src = Path(killswitch_audit.__file__).parent
    dst = tmp_path / "killswitch_audit"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("_native*.so", "__pycache__"))
    return dst


def test_a_missing_extension_is_one_import_error_naming_the_file_and_the_build(tmp_path):
    dst = _copy_without_extension(tmp_path)
    r = _import_copy(tmp_path)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: killswitch_audit: the file "), last
    assert f"{dst}/_native*.so" in last and "is missing" in last, last
    assert "pip install ." in last and "cargo build --release -p killswitch-audit-python" in last
    assert "circular import" not in r.stderr and "Warning" not in r.stderr, r.stderr


def test_an_extension_built_for_another_python_is_named(tmp_path):
    dst = _copy_without_extension(tmp_path)
    (dst / "_native.cpython-39-x86_64-linux-gnu.so").write_bytes(b"\x7fELF built elsewhere")
    r = _import_copy(tmp_path)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "_native.cpython-39-x86_64-linux-gnu.so is built for another Python" in last, last
    assert "circular import" not in r.stderr, r.stderr
