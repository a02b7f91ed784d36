"""Every KillSwitch joins its control plane without code (issue 14 point 2): a trading process
that never imports `killswitch_audit.control` is halted by the operator's CLI when the plane is
named by `$KILLSWITCH_AUDIT_CONTROL`, or by the `control.directory` key of the YAML config that
`$KILLSWITCH_AUDIT_CONFIG` names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

PLAIN_TRADER = textwrap.dedent(
    """
    import sys
    from killswitch_audit import AuditLogger, KillSwitch
    lg = AuditLogger(sys.argv[1], segment_size_mb=1)
    ks = KillSwitch(lg, latency_monitor=False, check_clock=False)
    print("ready", ks.allows(None), flush=True)
    for line in sys.stdin:
        if line.strip() == "EXIT":
            break
        print(ks.allows(None), flush=True)
    lg.close()
    """
)


@pytest.mark.parametrize("named_by", ["environment", "config file"])
def test_a_plain_killswitch_obeys_the_cli_when_the_plane_is_named(tmp_path, control, cli, named_by):
    env = dict(os.environ, KILLSWITCH_AUDIT_NO_SIGTERM="1")
    env.pop("KILLSWITCH_AUDIT_CONTROL", None)
    env.pop("KILLSWITCH_AUDIT_CONFIG", None)
    if named_by == "environment":
        env["KILLSWITCH_AUDIT_CONTROL"] = str(control)
    else:
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(f"control:\n  directory: {json.dumps(str(control))}\n")
        env["KILLSWITCH_AUDIT_CONFIG"] = str(cfg)
    p = subprocess.Popen(
        [sys.executable, "-c", PLAIN_TRADER, str(tmp_path / "log")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert p.stdout.readline().split() == ["ready", "True"]
        r = cli("halt", "--operator", "alice", "--reason", "named plane", control=control)
        assert r.returncode == 0, r.stderr
        assert "applied by 1 process(es)" in r.stdout
        p.stdin.write("?\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "False"
    finally:
        if p.poll() is None:
            p.stdin.write("EXIT\n")
            p.stdin.flush()
            p.wait(timeout=10)
