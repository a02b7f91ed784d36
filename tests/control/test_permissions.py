"""Who may do what on the host-local plane, with a real unprivileged user (issue 14 point 6).

The control directory belongs to the operators (here: root). A process running as another user
(`nobody`) runs the real CLI: its halt and its reset are refused with a message naming the
rule, exit code non-zero, and neither the state file nor the journal changes by one byte.
Needs root (to run the CLI as another uid); skipped with that reason otherwise.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="running the CLI as another user needs root"
)


def _fingerprint(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "procs" not in p.parts
    }


@pytest.fixture
def plane():
    from killswitch_audit.control import ControlPlane, init_directory

    # Under /tmp with a traversable parent: tmp_path's parents are 0700 root, which would
    # refuse `nobody` for the wrong reason (it could not even reach the directory).
    base = Path(tempfile.mkdtemp(prefix="ksa-perm-", dir="/tmp"))
    os.chmod(base, 0o755)
    root = base / "control"
    init_directory(root)
    cp = ControlPlane(root)
    cp.halt("account=A1", operator="risk.alice", reason="set up: a latched halt", wait_s=0)
    try:
        yield root
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _drop_to_nobody() -> None:
    nobody = pwd.getpwnam("nobody")
    os.setgid(nobody.pw_gid)
    os.setgroups([])
    os.setuid(nobody.pw_uid)


@pytest.fixture(scope="module")
def as_nobody():
    """Runs the CLI as `nobody`: an interpreter `nobody` may execute (ours lives under /root
    on CI machines, 0700), with a world-readable copy of this package and PyYAML."""
    import killswitch_audit
    import yaml

    want = f"{sys.version_info[0]}.{sys.version_info[1]}"
    interp = None
    for cand in (sys.executable, f"/usr/bin/python{want}", f"/usr/local/bin/python{want}"):
        try:
            r = subprocess.run(
                [cand, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                preexec_fn=_drop_to_nobody,
                cwd="/",
                timeout=30,
            )
        except OSError:
            continue
        if r.returncode == 0 and r.stdout.strip() == want:
            interp = cand
            break
    if interp is None:
        pytest.skip(f"no python{want} that the user nobody may execute")
    site = Path(tempfile.mkdtemp(prefix="ksa-site-", dir="/tmp"))
    for mod in (killswitch_audit, yaml):
        src = Path(mod.__file__).parent
        shutil.copytree(src, site / src.name, ignore=shutil.ignore_patterns("__pycache__"))
    for p in [site, *site.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)

    def run(*args: str) -> subprocess.CompletedProcess:
        env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": str(site)}
        return subprocess.run(
            [interp, "-m", "killswitch_audit", *args],
            capture_output=True,
            text=True,
            env=env,
            preexec_fn=_drop_to_nobody,
            timeout=60,
            cwd="/",
        )

    yield run
    shutil.rmtree(site, ignore_errors=True)


@pytest.mark.parametrize(
    "command",
    [
        ["reset", "--scope", "account=A1", "--operator", "mallory", "--reason", "lift it"],
        ["halt", "--operator", "mallory", "--reason", "halt the firm"],
    ],
    ids=["reset", "halt"],
)
def test_a_user_outside_the_operators_is_refused_and_nothing_changes(plane, as_nobody, command):
    from killswitch_audit.control import ControlPlane

    before = _fingerprint(plane)
    res = as_nobody(*command, "--control", str(plane))
    assert res.returncode != 0, res.stdout
    assert "may not" in res.stderr and "nothing changed" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert _fingerprint(plane) == before
    latched = {e["scope"]: e["state_name"] for e in ControlPlane(plane).status().latched}
    assert latched == {"account=A1": "HALTED"}  # the halt stands, nothing was added
