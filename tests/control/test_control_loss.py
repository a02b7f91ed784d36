"""Losing the control plane is a stated policy (on_control_loss), audited and alerted."""

from __future__ import annotations

import logging
import os
import time

import pytest
from killswitch_audit import AuditConfig, AuditLogger, KillSwitch, TradingState, read_audit_log
from killswitch_audit.control import ControlError, ControlPlane, init_directory, join
from killswitch_audit.format import RecordKind, decode_text_chunk


def _wait(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def switch(tmp_path):
    made = []

    def make(policy: str):
        cfg = AuditConfig.from_dict(
            {"control": {"on_control_loss": policy, "loss_after_s": 0.3, "heartbeat_s": 0.1}}
        )
        lg = AuditLogger(tmp_path / "log", segment_size_mb=1, emergency_buffer_size=1024)
        ks = KillSwitch(lg, latency_monitor=False, config=cfg, check_clock=False, warm_up=False)
        made.append(lg)
        return ks, cfg

    yield make
    for lg in made:
        lg.close()


def _texts(directory) -> str:
    """Every TEXT of a log, chunks joined per attached record."""
    chunks: dict[int, list[tuple[int, str]]] = {}
    for r in read_audit_log(directory):
        if r.kind == RecordKind.TEXT:
            chunks.setdefault(r.c, []).append((r.code, decode_text_chunk(r.a, r.b, r.symbol_id)))
    return "\n".join("".join(t for _, t in sorted(v)) for v in chunks.values())


@pytest.mark.parametrize("fault", ["removed", "forged magic", "world-writable"])
@pytest.mark.parametrize(
    "policy,state", [("reduce", TradingState.REDUCING), ("halt", TradingState.HALTED)]
)
def test_bad_state_file_trips_the_loss_policy_and_contact_returning_is_audited(
    tmp_path, switch, caplog, fault, policy, state
):
    control = tmp_path / "control"
    init_directory(control)
    ks, cfg = switch(policy)
    m = join(ks, cfg, location=control)
    assert ks.trading_state(None) == TradingState.ACTIVE
    caplog.set_level(logging.WARNING, logger="killswitch_audit.alerts")
    st = control / "state"
    if fault == "removed":
        os.unlink(st)
    elif fault == "forged magic":
        with open(st, "r+b") as f:
            f.write(b"XXXXXXXX")
    else:
        os.chmod(st, 0o666)
    assert _wait(lambda: m.control_lost)
    assert ks.trading_state(None) == state
    assert not ks.allows(None)
    assert any("control plane lost" in r.getMessage() for r in caplog.records)
    # contact returns
    if fault == "removed":
        init_directory(control)
    elif fault == "forged magic":
        with open(st, "r+b") as f:
            f.write(b"KSACTL01")
    else:
        os.chmod(st, 0o644)
    assert _wait(lambda: not m.control_lost)
    assert any("contact restored" in r.getMessage() for r in caplog.records)
    # the restriction holds until an operator's reset reaches the process
    assert ks.trading_state(None) == state
    ControlPlane(control, cfg).reset(operator="alice", reason="plane is back")
    assert _wait(lambda: ks.trading_state(None) == TradingState.ACTIVE)
    m.close()
    ks.audit_logger.flush(2.0)
    texts = _texts(ks.audit_logger.directory)
    assert '"event": "control_lost"' in texts and '"event": "control_restored"' in texts
    assert f'"policy": "{policy}"' in texts


def test_policy_none_only_audits_and_alerts(tmp_path, switch, caplog):
    control = tmp_path / "control"
    init_directory(control)
    ks, cfg = switch("none")
    m = join(ks, cfg, location=control)
    caplog.set_level(logging.WARNING, logger="killswitch_audit.alerts")
    os.unlink(control / "state")
    assert _wait(lambda: m.control_lost)
    assert ks.allows(None) and ks.trading_state(None) == TradingState.ACTIVE
    assert any("control plane lost" in r.getMessage() for r in caplog.records)
    m.close()


def test_join_refuses_an_untrustworthy_state_file(tmp_path, switch):
    control = tmp_path / "control"
    init_directory(control)
    ks, cfg = switch("reduce")
    os.chmod(control / "state", 0o666)
    with pytest.raises(ControlError, match="world-writable"):
        join(ks, cfg, location=control)
    os.unlink(control / "state")
    os.symlink("/etc/passwd", control / "state")
    with pytest.raises(ControlError):
        join(ks, cfg, location=control)


def test_join_without_a_named_plane_is_none(switch, monkeypatch):
    monkeypatch.delenv("KILLSWITCH_AUDIT_CONTROL", raising=False)
    ks, _ = switch("reduce")
    assert join(ks, AuditConfig.from_dict({})) is None
