"""Host-local control plane, end to end: real trading processes, the CLI run as a user would."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from killswitch_audit import AuditConfig, read_audit_log
from killswitch_audit.control import ControlError, ControlPlane
from killswitch_audit.format import RecordKind, decode_text_chunk

CFG = AuditConfig.from_dict({})


def _control_texts(log_dir: Path) -> list[dict]:
    """The `control:{json}` TEXT payloads of a process's own log."""
    texts: dict[int, list[tuple[int, str]]] = {}
    for r in read_audit_log(log_dir):
        if r.kind == RecordKind.TEXT:
            texts.setdefault(r.c, []).append((r.code, decode_text_chunk(r.a, r.b, r.symbol_id)))
    out = []
    for chunks in texts.values():
        t = "".join(c for _, c in sorted(chunks))
        if t.startswith("control:"):
            out.append(json.loads(t[len("control:") :]))
    return out


def test_cli_halt_blocks_every_joined_process_and_reset_restores(traders, control, cli):
    ts = [traders(f"t{i}") for i in range(3)]
    assert all(t.allows() for t in ts)
    r = cli("halt", "--operator", "alice", "--reason", "runaway", control=control)
    assert r.returncode == 0, r.stderr
    assert "applied by 3 process(es)" in r.stdout
    assert [t.allows() for t in ts] == [False, False, False]
    # status lists them, halted, with the command applied
    st = json.loads(cli("status", "--json", control=control).stdout)
    assert [e["scope"] for e in st["latched"]] == ["firm"]
    live = [p for p in st["processes"] if not p["stale"]]
    assert sorted(p["pid"] for p in live) == sorted(t.pid for t in ts)
    assert all(p["states"] == {"firm": "HALTED"} and p["last_command_id"] == 1 for p in live)
    r = cli("reset", "--operator", "bob", "--reason", "fixed", control=control)
    assert r.returncode == 0, r.stderr
    assert [t.allows() for t in ts] == [True, True, True]
    for t in ts:
        t.stop()
        # each process audited the command into its own log, with who, why and from where
        texts = _control_texts(t.log_dir)
        assert any(
            x.get("command_id") == 1
            and x["operator"] == "alice"
            and x["reason"] == "runaway"
            and x["host"]
            and x["scope"] == "firm"
            for x in texts
        ), texts
        kinds = [r.kind for r in read_audit_log(t.log_dir)]
        assert RecordKind.KILL_SWITCH in kinds and RecordKind.RESET in kinds


def test_scoped_halt_and_reduce_only_cover_only_their_orders(traders, control):
    t = traders("t")
    plane = ControlPlane(control, CFG)
    res = plane.halt("account=A;venue=X", operator="alice", reason="venue issue")
    assert res.ok and len(res.applied_by) == 1
    assert t.allows("account=A;venue=X") is False
    assert t.allows("account=A;venue=Y") is True
    assert t.allows("account=B;venue=X") is True
    plane.halt("strategy=mm", True, operator="alice", reason="wind down")
    a = t.ask("account=B;strategy=mm")
    assert (a["allows"], a["reduce"]) == (False, True)


def test_process_started_during_a_halt_comes_up_halted(traders, control):
    plane = ControlPlane(control, CFG)
    res = plane.halt(operator="alice", reason="before anyone joined")
    assert res.applied_by == [] and res.missing == []
    t = traders("late")
    assert t.hello["first_allows"] is False  # its very first allows() already denied
    assert t.allows() is False
    plane.reset(operator="alice", reason="over")
    assert t.allows() is True


def test_sigkilled_process_is_stale_in_status_and_not_waited_for(traders, control, cli):
    alive, doomed = traders("alive"), traders("doomed")
    doomed.kill()
    plane = ControlPlane(control, CFG)
    st = {p.pid: p for p in plane.status().processes}
    assert st[doomed.pid].stale and not st[alive.pid].stale
    r = cli("status", control=control)
    assert "1 live, 1 stale" in r.stdout and f"STALE pid {doomed.pid}" in r.stdout
    res = plane.halt(operator="alice", reason="x", wait_s=5)
    assert [a.pid for a in res.applied_by] == [alive.pid] and res.missing == []


def test_control_journal_verifies_and_events_give_the_timeline(traders, control, cli):
    traders("t")
    plane = ControlPlane(control, CFG)
    plane.halt("account=A", operator="alice", reason="r1")
    plane.reset("account=A", operator="bob", reason="r2")
    r = cli("verify", str(control / "journal"), control=None)
    assert r.returncode == 0, r.stdout + r.stderr
    ev = plane.events()
    assert [(e["kind"], e["operator"], e["scope"], e["command_id"]) for e in ev] == [
        ("halt", "alice", "account=A", 1),
        ("reset", "bob", "account=A", 2),
    ]
    assert plane.events(since=ev[0]["seq"])[0]["kind"] == "reset"


def test_halt_lists_a_process_that_does_not_ack(traders, control, cli):
    t = traders("frozen")
    os.kill(t.proc.pid, 19)  # SIGSTOP: alive (holds its lock) but cannot ack
    try:
        r = cli("halt", "--operator", "alice", "--reason", "x", "--wait", "0.5", control=control)
    finally:
        os.kill(t.proc.pid, 18)  # SIGCONT
    assert r.returncode == 1
    assert f"MISSING: pid {t.pid}" in r.stdout
    assert t.allows() is False  # it applies the halt once it runs again


def test_a_process_that_refuses_a_reset_is_named_and_the_reset_is_not_ok(traders, control, cli):
    """A process whose own config requires a second operator refuses a one-operator reset
    from the plane: it acknowledges the command, keeps its halt, and the plane's answer names
    it (exit 1, STILL RESTRICTED) instead of reporting the reset applied."""
    plain = traders("plain")
    strict = traders("strict", {"kill_switch": {"reset": {"require_second_operator": True}}})
    r = cli("halt", "--operator", "alice", "--reason", "x", control=control)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [plain.allows(), strict.allows()] == [False, False]
    r = cli("reset", "--operator", "bob", "--reason", "fixed", control=control)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"STILL RESTRICTED: pid {strict.pid}" in r.stdout and "applied by 1 process" in r.stdout
    assert [plain.allows(), strict.allows()] == [True, False]  # fails closed where refused
    res = json.loads(cli("status", "--json", control=control).stdout)
    states = {p["pid"]: p["states"] for p in res["processes"]}
    assert states[strict.pid] == {"firm": "HALTED"} and states[plain.pid] == {}
    strict.stop()
    refused = [
        r for r in read_audit_log(strict.log_dir) if r.kind == RecordKind.RESET and r.code == 1
    ]
    assert len(refused) == 1  # the refusal is in its own audit log


def test_bad_input_is_refused_and_changes_nothing(control, cli):
    plane = ControlPlane(control, CFG)
    with pytest.raises(ValueError, match="malformed scope"):
        plane.halt("acount=A", operator="alice", reason="x")
    with pytest.raises(ValueError, match="operator"):
        plane.halt(operator="", reason="x")
    with pytest.raises(ValueError, match="reason"):
        plane.halt(operator="alice", reason="  ")
    with pytest.raises(ValueError, match="account"):
        plane.halt("account=" + "x" * 33, operator="alice", reason="x")
    assert plane.status().last_command_id == 0
    r = cli("halt", "--operator", "alice", control=control)
    assert r.returncode == 2
    # a nats:// location is the NATS plane (tests/control/test_nats.py); a bad one is named
    with pytest.raises(ControlError, match="bad server"):
        ControlPlane("nats://127.0.0.1:x:y", CFG)


def test_second_operator_enforced_when_configured(traders, control):
    cfg = AuditConfig.from_dict({"control": {"require_second_operator": True}})
    plane = ControlPlane(control, cfg)
    t = traders("t")
    plane.halt(operator="alice", reason="x")
    from killswitch_audit.control import ControlRefused

    with pytest.raises(ControlRefused, match="second"):
        plane.reset(operator="alice", reason="y")
    with pytest.raises(ControlRefused, match="differ"):
        plane.reset(operator="alice", reason="y", second_operator="ALICE")
    assert t.allows() is False and plane.status().latched
    refused = [
        r for r in read_audit_log(control / "journal") if r.kind == RecordKind.RESET and r.code == 1
    ]
    assert len(refused) == 2  # audited as refused in the journal
    plane.reset(operator="alice", reason="y", second_operator="carol")
    assert t.allows() is True


def test_a_halt_is_in_force_before_it_is_journaled_and_stays_when_the_journal_fails(
    tmp_path, traders
):
    """Halts are published first (gate first, as in emergency_stop), then journaled. On a real
    full disk, where the journal cannot open a segment, the halt still closes every gate and
    the error says it is in force but not journaled. A reset on the same full disk is refused
    and lifts nothing (evidence that lifts must be written first)."""
    import shutil
    import subprocess
    import tempfile

    from killswitch_audit.control import init_directory

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) for a small tmpfs")
    mnt = Path(tempfile.mkdtemp(prefix="ksa-ctl-tmpfs-"))
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)])
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        control = mnt / "control"
        init_directory(control)
        t = traders("full-disk", control=control)
        assert t.allows()
        with open(mnt / "filler", "wb") as f:  # fill the tmpfs to the last byte
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
        plane = ControlPlane(control)
        with pytest.raises(ControlError, match="IN FORCE"):
            plane.halt("firm", operator="alice", reason="disk full drill", wait_s=5)
        assert t.allows() is False
        assert [e["scope"] for e in plane.status().latched] == ["firm"]
        with pytest.raises(ControlError):
            plane.reset("firm", operator="bob", reason="try to lift on a full disk", wait_s=1)
        assert t.allows() is False
        t.stop()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        shutil.rmtree(mnt, ignore_errors=True)
