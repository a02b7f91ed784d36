"""A wheel built once installs and runs on a machine without Rust (issue 17, point 1).

Builds the wheel from this checkout (reusing the build tree, so seconds when `pip install .`
ran before), installs it into a fresh virtualenv whose PATH has no cargo or rustc, and runs
the package there: import, the native engine, a halt restored from the log, the CLI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


@pytest.mark.skipif(shutil.which("cargo") is None, reason="building the wheel needs cargo")
def test_a_prebuilt_wheel_installs_and_runs_without_rust_on_path(tmp_path):
    wheels = tmp_path / "wheels"
    built = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(REPO),
        ]
    )
    if built.returncode != 0 and "maturin" in built.stderr:
        pytest.skip(f"maturin is not importable here: {built.stderr[-300:]}")
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("killswitch_audit-*.whl")

    venv = tmp_path / "venv"
    # system site-packages only for pyyaml; the package itself comes from the wheel
    assert _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)]).returncode == 0
    no_rust_path = os.pathsep.join(
        p
        for p in os.environ.get("PATH", "").split(os.pathsep)
        if p and not (Path(p) / "cargo").exists() and not (Path(p) / "rustc").exists()
    )
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{no_rust_path}"}
    env.pop("CARGO_HOME", None)
    env.pop("RUSTUP_HOME", None)
    env.pop("PYTHONPATH", None)  # the venv must import the wheel it installed, nothing else
    assert shutil.which("cargo", path=env["PATH"]) is None
    inst = _run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--ignore-installed",
            str(wheel),
        ],
        env=env,
    )
    assert inst.returncode == 0, inst.stderr[-2000:]

    script = textwrap.dedent(
        f"""
        import killswitch_audit, sys
        assert killswitch_audit.__file__.startswith({str(venv)!r}), killswitch_audit.__file__
        from killswitch_audit import AuditLogger, default_config
        from killswitch_audit.killswitch import KillSwitch
        d = sys.argv[1]
        with AuditLogger(d, segment_size_mb=1) as lg:
            KillSwitch(lg, latency_monitor=False, config=default_config()).emergency_stop("manual")
        with AuditLogger(d, segment_size_mb=1) as lg:
            ks = KillSwitch(lg, latency_monitor=False, config=default_config())
            assert ks.halted
        print("ok")
        """
    )
    ran = _run([str(venv / "bin" / "python"), "-c", script, str(tmp_path / "log")], env=env)
    assert ran.returncode == 0 and ran.stdout.strip() == "ok", ran.stderr[-2000:]
    cli = _run([str(venv / "bin" / "killswitch-audit"), "verify", str(tmp_path / "log")], env=env)
    assert cli.returncode == 0, cli.stdout + cli.stderr
