"""Fixtures of the control-plane tests: a control directory and real trading processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
TRADER = HERE / "trader.py"


class Trader:
    """A subprocess holding a KillSwitch joined to the control plane; ask() queries its gate."""

    def __init__(self, log_dir: Path, control: Path, name: str, config: dict | None = None):
        env = dict(os.environ, KILLSWITCH_AUDIT_NO_SIGTERM="1")
        env.pop("KILLSWITCH_AUDIT_CONTROL", None)
        self.log_dir = log_dir
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(TRADER),
                str(log_dir),
                str(control),
                name,
                json.dumps(config or {}),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"trader {name} died at start (rc {self.proc.wait()})")
        self.hello = json.loads(line)
        self.pid = self.hello["pid"]

    def ask(self, scope: str = "firm") -> dict:
        self.proc.stdin.write(scope + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def allows(self, scope: str = "firm") -> bool:
        return self.ask(scope)["allows"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("EXIT\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except Exception:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def control(tmp_path: Path) -> Path:
    from killswitch_audit.control import init_directory

    d = tmp_path / "control"
    init_directory(d)
    return d


@pytest.fixture
def traders(tmp_path: Path, control: Path):
    started: list[Trader] = []

    def start(name: str, config: dict | None = None, control: Path = control) -> Trader:
        t = Trader(tmp_path / f"log-{name}-{len(started)}", control, name, config)
        started.append(t)
        return t

    yield start
    for t in started:
        t.stop()


def run_cli(*args: str, control: Path | None, user: str | None = None, env: dict | None = None):
    """Runs `python -m killswitch_audit ARGS --control DIR` as a user would."""
    cmd = [sys.executable, "-m", "killswitch_audit", *args]
    if control is not None:
        cmd += ["--control", str(control)]
    if user is not None:
        cmd = ["runuser", "-u", user, "--", *cmd]
    e = dict(os.environ, **(env or {}))
    e.pop("KILLSWITCH_AUDIT_CONTROL", None)
    return subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=60)


@pytest.fixture
def cli():
    return run_cli
