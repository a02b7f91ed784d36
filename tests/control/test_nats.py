"""The firm-wide control plane on NATS JetStream (issue 14 point 4), end to end: a real
nats-server (single node, and a 3-node cluster with R3 buckets), real trading processes, the CLI
run as a user would. Skipped only when nats-server or nats-py is not installed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from killswitch_audit import AuditConfig, read_audit_log
from killswitch_audit.format import RecordKind, decode_text_chunk


def _sibling(name: str):
    """A module of this directory by path: `conftest` alone names whichever conftest.py of
    the suite was imported first (tests/, tests/console/, ...)."""
    spec = importlib.util.spec_from_file_location(
        f"control_{name}", Path(__file__).with_name(f"{name}.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_conftest = _sibling("conftest")
Trader, run_cli = _conftest.Trader, _conftest.run_cli
_natsfixtures = _sibling("natsfixtures")
NatsServer, cluster = _natsfixtures.NatsServer, _natsfixtures.cluster
missing_reason, wait_jetstream = _natsfixtures.missing_reason, _natsfixtures.wait_jetstream
PLAIN_TRADER = _sibling("test_join_without_code").PLAIN_TRADER

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")


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


def _until(pred, timeout: float = 30.0) -> bool:
    """Polls `pred` (a bound, not a timing assert: the test fails only if it never holds)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def nats_url(tmp_path):
    s = NatsServer(tmp_path / "store")
    s.start()
    wait_jetstream(s.url)
    yield s.url
    s.stop()


@pytest.fixture
def nats_node(tmp_path):
    s = NatsServer(tmp_path / "store")
    s.start()
    wait_jetstream(s.url)
    yield s
    s.kill()


@pytest.fixture
def ntraders(tmp_path):
    started: list[Trader] = []

    def start(url: str, name: str, config: dict | None = None) -> Trader:
        t = Trader(tmp_path / f"log-{name}-{len(started)}", url, name, config)
        started.append(t)
        return t

    yield start
    for t in started:
        t.stop()


def test_cli_halt_blocks_every_trader_and_reset_lifts_it(nats_url, ntraders):
    ts = [ntraders(nats_url, f"t{i}") for i in range(3)]
    assert all(t.allows() for t in ts)
    r = run_cli("halt", "--operator", "alice", "--reason", "runaway", control=nats_url)
    assert r.returncode == 0, r.stderr
    assert "applied by 3 process(es)" in r.stdout
    assert [t.allows() for t in ts] == [False, False, False]
    st = json.loads(run_cli("status", "--json", control=nats_url).stdout)
    assert [e["scope"] for e in st["latched"]] == ["firm"]
    halt_id = st["latched"][0]["command_id"]
    live = [p for p in st["processes"] if not p["stale"]]
    assert sorted(p["pid"] for p in live) == sorted(t.pid for t in ts)
    assert all(p["states"] == {"firm": "HALTED"} for p in live)
    assert all(p["last_command_id"] == halt_id for p in live)
    r = run_cli("reset", "--operator", "bob", "--reason", "fixed", control=nats_url)
    assert r.returncode == 0, r.stderr
    assert [t.allows() for t in ts] == [True, True, True]
    st = json.loads(run_cli("status", "--json", control=nats_url).stdout)
    assert st["latched"] == []
    for t in ts:
        t.stop()
        # each process audited the command into its own log: who, why, from where, which id
        texts = _control_texts(t.log_dir)
        assert any(
            x.get("command_id") == halt_id
            and x["operator"] == "alice"
            and x["reason"] == "runaway"
            and x["host"]
            and x["scope"] == "firm"
            for x in texts
        ), texts
        kinds = [r.kind for r in read_audit_log(t.log_dir)]
        assert RecordKind.KILL_SWITCH in kinds and RecordKind.RESET in kinds


def test_scoped_halt_and_reduce_only(nats_url, ntraders):
    a, b = ntraders(nats_url, "a"), ntraders(nats_url, "b")
    r = run_cli(
        "halt", "--scope", "account=A1", "--reduce-only", "--operator", "alice",
        "--reason", "limit", control=nats_url,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    for t in (a, b):
        got = t.ask("account=A1")
        assert (got["allows"], got["reduce"]) == (False, True)
        assert t.allows("account=A2")


def test_a_process_started_during_a_halt_comes_up_halted(nats_url, ntraders, tmp_path):
    # the CLI finds the plane by $KILLSWITCH_AUDIT_CONTROL alone, as the processes do
    r = subprocess.run(
        [sys.executable, "-m", "killswitch_audit", "halt", "--operator", "alice", "--reason", "x"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, KILLSWITCH_AUDIT_CONTROL=nats_url),
    )
    assert r.returncode == 0, r.stderr
    assert "applied by 0 process(es)" in r.stdout
    t = ntraders(nats_url, "late")
    assert t.hello["first_allows"] is False  # halted before its first allows()
    # and a plain KillSwitch that joins by $KILLSWITCH_AUDIT_CONTROL alone, without code
    env = dict(os.environ, KILLSWITCH_AUDIT_NO_SIGTERM="1", KILLSWITCH_AUDIT_CONTROL=nats_url)
    env.pop("KILLSWITCH_AUDIT_CONFIG", None)
    p = subprocess.Popen(
        [sys.executable, "-c", PLAIN_TRADER, str(tmp_path / "plain")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert p.stdout.readline().split() == ["ready", "False"]
        r = run_cli("reset", "--operator", "bob", "--reason", "over", control=nats_url)
        assert r.returncode == 0, r.stderr
        assert "applied by 2 process(es)" in r.stdout
        p.stdin.write("?\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "True"
        assert t.allows()
    finally:
        if p.poll() is None:
            p.stdin.write("EXIT\n")
            p.stdin.flush()
            p.wait(timeout=10)


def test_a_command_published_twice_is_applied_once(nats_url, ntraders):
    from killswitch_audit.control import ControlPlane
    from killswitch_audit.control.nats_plane import NatsControlPlane

    ts = [ntraders(nats_url, f"t{i}") for i in range(2)]
    plane = ControlPlane(nats_url, AuditConfig.from_dict({}))
    assert isinstance(plane, NatsControlPlane)
    first = plane.halt("venue=X", operator="alice", reason="twice", idempotency_key="cmd-42")
    again = plane.halt("venue=X", operator="alice", reason="twice", idempotency_key="cmd-42")
    assert first.ok and len(first.applied_by) == 2
    assert again.command_id == first.command_id
    assert [t.allows("venue=X") for t in ts] == [False, False]
    # a later command still goes through, after it
    later = plane.reset("venue=X", operator="bob", reason="done")
    assert later.command_id > first.command_id and later.ok
    assert [t.allows("venue=X") for t in ts] == [True, True]
    for t in ts:
        t.stop()
        texts = [x for x in _control_texts(t.log_dir) if x.get("command_id") == first.command_id]
        assert len(texts) == 1, texts
    events = plane.events()
    assert [e["command_id"] for e in events] == [first.command_id, later.command_id]


def test_a_member_that_refuses_a_reset_is_named_and_the_reset_is_not_ok(nats_url, ntraders):
    from killswitch_audit.control import ControlPlane

    plain = ntraders(nats_url, "plain")
    strict = ntraders(
        nats_url, "strict", {"kill_switch": {"reset": {"require_second_operator": True}}}
    )
    plane = ControlPlane(nats_url, AuditConfig.from_dict({}))
    assert plane.halt(operator="alice", reason="x").ok
    res = plane.reset(operator="bob", reason="fixed")
    assert not res.ok and res.missing == []
    assert [a.pid for a in res.still_restricted] == [strict.pid]
    assert [a.pid for a in res.applied_by] == [plain.pid]
    assert [plain.allows(), strict.allows()] == [True, False]


def test_control_plane_rejects_bad_input(nats_url):
    from killswitch_audit.control import ControlError, ControlPlane

    cfg = AuditConfig.from_dict({})
    with pytest.raises(ControlError, match="bad server"):
        ControlPlane("nats://127.0.0.1:x:y", cfg)
    with pytest.raises(ControlError, match="replicas"):
        ControlPlane(nats_url + "?replicas=9", cfg)
    from natsfixtures import free_port

    r = run_cli("status", control=f"nats://127.0.0.1:{free_port()}")  # nobody there
    assert r.returncode == 1 and "cannot connect" in r.stderr, r.stderr
    plane = ControlPlane(nats_url, cfg)
    with pytest.raises(ValueError, match="reason"):
        plane.halt(operator="alice", reason=" ")
    with pytest.raises(ValueError, match="operator"):
        plane.halt(operator="", reason="x")
    # four eyes when configured: refused before anything is sent
    from killswitch_audit.control import ControlRefused

    four = ControlPlane(
        nats_url, AuditConfig.from_dict({"control": {"require_second_operator": True}})
    )
    four.halt(operator="alice", reason="x")
    with pytest.raises(ControlRefused, match="second"):
        four.reset(operator="alice", reason="y")
    with pytest.raises(ControlRefused, match="differ"):
        four.reset(operator="alice", reason="y", second_operator="ALICE")
    assert [e["scope"] for e in four.status().latched] == ["firm"]
    assert four.reset(operator="alice", reason="y", second_operator="carol").ok
    assert four.status().latched == []


def test_losing_the_server_trips_the_policy_and_its_return_is_audited(nats_node, ntraders):
    cfg = {"control": {"on_control_loss": "reduce", "loss_after_s": 0.3, "heartbeat_s": 0.1}}
    t = ntraders(nats_node.url, "lossy", cfg)
    assert t.allows()
    nats_node.kill()
    assert _until(lambda: t.ask()["lost"])
    got = t.ask()
    assert (got["allows"], got["reduce"]) == (False, True)  # reduce-only, by default policy
    nats_node.start()
    assert _until(lambda: not t.ask()["lost"])
    assert not t.allows()  # the restriction stays until an operator resets it

    def live() -> bool:  # heart-beating again (the restarted server lost the memory bucket)
        st = json.loads(run_cli("status", "--json", control=nats_node.url).stdout)
        return any(p["pid"] == t.pid and not p["stale"] for p in st["processes"])

    assert _until(live)
    r = run_cli("reset", "--operator", "bob", "--reason", "back", control=nats_node.url)
    assert r.returncode == 0, r.stderr
    assert "applied by 1 process(es)" in r.stdout
    assert t.allows()
    t.stop()
    events = [x.get("event") for x in _control_texts(t.log_dir)]
    assert "control_lost" in events and "control_restored" in events


# docs/CONTROL.md's accounts, as tested: the trading processes' user may read (stream info,
# consumers, gets: `status` works) and heartbeat, and publish nothing else; the operators' user
# may do anything in the account
PERMS = """
authorization {
  users = [
    {user: operator, password: op-secret}
    {user: trader, password: tr-secret, permissions: {
       publish: {allow: ["$JS.API.INFO",
                         "$JS.API.STREAM.INFO.>",
                         "$JS.API.CONSUMER.CREATE.>",
                         "$JS.API.CONSUMER.INFO.>",
                         "$JS.API.DIRECT.GET.>",
                         "$JS.API.STREAM.MSG.GET.>",
                         "$JS.FC.>",
                         "$KV.ksa_presence.>",
                         "ksa.anchor.>"]}
       subscribe: {allow: ["_INBOX.>"]}
    }}
  ]
}
"""


def test_only_an_operator_user_may_halt_or_reset(tmp_path):
    conf = tmp_path / "auth.conf"
    conf.write_text(PERMS)
    s = NatsServer(tmp_path / "store", config=conf)
    s.start()
    try:
        host = s.url[len("nats://") :]
        operator = f"nats://operator:op-secret@{host}"
        trader = f"nats://trader:tr-secret@{host}"
        wait_jetstream(s.url, user="operator", password="op-secret")
        r = run_cli("halt", "--operator", "alice", "--reason", "firm", control=operator)
        assert r.returncode == 0, r.stderr
        # a trading process's user joins (reads, heartbeats) but may not reset
        t = Trader(tmp_path / "log", trader, "t")
        try:
            assert t.hello["first_allows"] is False
            r = run_cli("reset", "--operator", "mallory", "--reason", "me", control=trader)
            assert r.returncode != 0
            assert "refused" in r.stderr and "tr-secret" not in r.stderr + r.stdout
            assert "$kv.ksa_latched" in r.stderr.lower()  # refused at the latch itself
            assert not t.allows()
            st = json.loads(run_cli("status", "--json", control=operator).stdout)
            assert [e["scope"] for e in st["latched"]] == ["firm"]  # nothing changed
            r = run_cli("reset", "--operator", "bob", "--reason", "ok", control=operator)
            assert r.returncode == 0, r.stderr
            assert t.allows()
        finally:
            t.stop()
        # the trader's user anchored its log (the operator's first command made the stream)
        from killswitch_audit.control.anchor import verify_anchor

        assert _until(lambda: verify_anchor(t.log_dir, operator).records_anchored >= 1)
    finally:
        s.stop()


def test_three_node_cluster_loses_nothing_when_a_node_dies_during_a_halt(tmp_path):
    nodes = cluster(tmp_path)
    try:
        hosts = ",".join(n.url[len("nats://") :] for n in nodes)
        url = f"nats://{hosts}?replicas=3"
        wait_jetstream(url)
        ts = [Trader(tmp_path / f"log{i}", url, f"t{i}") for i in range(3)]
        try:
            r = run_cli("halt", "--operator", "alice", "--reason", "cluster", control=url)
            assert r.returncode == 0, r.stderr
            assert "applied by 3 process(es)" in r.stdout
            nodes[0].kill()  # SIGKILL one of the three during the halt
            assert [t.allows() for t in ts] == [False, False, False]
            rest = ",".join(n.url[len("nats://") :] for n in nodes[1:])
            left = f"nats://{rest}?replicas=3"
            # the latch survived on the quorum: a process restarted now comes up halted
            ts[0].kill()
            ts[0] = Trader(tmp_path / "log0b", left, "t0b")
            assert ts[0].hello["first_allows"] is False
            st = json.loads(run_cli("status", "--json", control=left).stdout)
            assert [e["scope"] for e in st["latched"]] == ["firm"]
            r = run_cli("reset", "--operator", "bob", "--reason", "fine", control=left)
            assert r.returncode == 0, r.stderr + r.stdout
            assert _until(lambda: all(t.allows() for t in ts))
        finally:
            for t in ts:
                t.stop()
    finally:
        for n in nodes:
            n.kill()


def test_the_gate_closes_from_the_private_table_before_the_command_is_applied(nats_url, tmp_path):
    """The member writes the command into the table the gate reads before it applies and
    audits it: with the apply path blocked, `allows()` already answers no."""
    from killswitch_audit import AuditLogger, KillSwitch
    from killswitch_audit.control import ControlPlane, join

    cfg = AuditConfig.from_dict({})
    lg = AuditLogger(tmp_path / "log", segment_size_mb=1)
    try:
        ks = KillSwitch(lg, latency_monitor=False, config=cfg, check_clock=False, warm_up=False)
        m = join(ks, cfg, location=nats_url, name="inproc")
        try:
            assert ks.allows(None)
            with m._member.lock:  # the apply/audit path cannot run
                res = ControlPlane(nats_url, cfg).halt(operator="alice", reason="x", wait_s=0)
                assert _until(lambda: not ks.allows(None))
                assert ks.halted_scopes == {}  # not applied to the switch itself yet
            assert _until(lambda: m.last_command_id == res.command_id)
            assert not ks.allows(None) and ks.halted_scopes  # now latched in its own log too
        finally:
            m.close()
    finally:
        lg.close()


def test_the_off_host_anchor_catches_a_deleted_newest_segment(nats_url, tmp_path):
    """A log cut after a sealed segment still verifies on its own; against the chain heads it
    anchored off-host, `verify --anchor` names the missing segment (issue 14 point 7)."""
    from killswitch_audit import AuditLogger
    from killswitch_audit.control.anchor import Anchor, verify_anchor
    from killswitch_audit.reader import list_segments

    log = tmp_path / "log"
    lg = AuditLogger(log, segment_size_mb=1)
    for i in range(40_000):  # ~2.5 segments of 1 MiB
        lg.audit_trade(1, i, 100, i)
        if i % 10_000 == 0:
            lg.audit_kill_switch(2, 1, 1, 1)
        if i % 2_000 == 0:
            lg.flush(10.0)  # no drop on a starved writer: the log must verify clean
    lg.close()  # seals every segment
    segs = list_segments(log)
    assert len(segs) >= 3
    anchor = Anchor(nats_url, log)
    assert anchor.publish() > 0
    assert anchor.publish() == 0  # nothing new: nothing sent again
    rep = verify_anchor(log, nats_url)
    assert rep.ok and rep.segments_anchored == len(segs) and rep.records_anchored == 4
    r = run_cli("verify", str(log), "--anchor", nats_url, control=None)
    assert r.returncode == 0, r.stdout + r.stderr
    # the attacker's cut: the newest segment goes. The log alone may still verify (it does
    # whenever the cut falls at a seq-reservation block boundary; otherwise the remaining
    # header's seq_reserved mark shows a loss range): the anchor names the segment either way
    os.remove(segs[-1][1])
    r = run_cli("verify", str(log), "--anchor", nats_url, control=None)
    assert r.returncode == 1
    assert f"segment {segs[-1][0]}" in r.stdout and "missing from the log" in r.stdout


def test_a_joined_process_anchors_its_kill_switch_records(nats_url, ntraders):
    from killswitch_audit.control.anchor import verify_anchor

    t = ntraders(nats_url, "anchored", {"control": {"heartbeat_s": 0.1}})
    r = run_cli("halt", "--operator", "alice", "--reason", "anchor me", control=nats_url)
    assert r.returncode == 0, r.stderr
    assert _until(lambda: verify_anchor(t.log_dir, nats_url).records_anchored >= 1)
    assert verify_anchor(t.log_dir, nats_url).ok


def test_an_unreadable_latch_entry_halts_the_firm(nats_url, ntraders):
    """Whatever an operator's tool wrote into the latch bucket that is not a latch entry is
    believed to be the worst: a firm halt, loudly (fail closed)."""
    import asyncio

    import nats

    t = ntraders(nats_url, "t")
    assert t.allows()

    async def garbage() -> None:
        nc = await nats.connect(nats_url)
        try:
            kv = await nc.jetstream().key_value("ksa_latched")
            await kv.put("12345", b"{not json")
        finally:
            await nc.close()

    asyncio.run(garbage())
    assert _until(lambda: not t.allows("account=ANY"))
    assert not t.ask()["reduce"]  # halted, not reduce-only
