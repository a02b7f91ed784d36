"""The README's examples run as written (with the orchestrator's functions stubbed)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_usage_example_runs_and_leaves_a_verified_log(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = []
    namespace = {
        "cancel_all_orders": lambda: calls.append("cancel"),
        "stop_live_trading": lambda: calls.append("stop"),
        "send": lambda order: calls.append("send"),
        "order": object(),
    }
    usage, reading = _python_blocks()[:2]
    exec(compile(usage, "README usage", "exec"), namespace)
    assert calls == ["send", "cancel", "stop"]
    assert namespace["report"].ok
    exec(compile(reading.replace("print(", "(lambda *a: a)("), "README reading", "exec"), {})
    from killswitch_audit import RecordKind, read_audit_log, verify_audit_log

    kinds = [r.kind for r in read_audit_log(tmp_path / "audit_logs")]
    assert RecordKind.KILL_SWITCH in kinds and RecordKind.RESET in kinds
    assert verify_audit_log(tmp_path / "audit_logs").ok


def test_readme_cli_commands_exist():
    text = README.read_text()
    for command in re.findall(r"^killswitch-audit (\w+)", text, flags=re.M):
        out = subprocess.run(
            [sys.executable, "-m", "killswitch_audit", command, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, (command, out.stderr)
