"""The risk console on the firm-wide NATS JetStream plane (issue 15: one web application for both
planes), end to end: a real nats-server, a real console server (`killswitch-audit console
--control nats://...`), a real trading process joined by `$KILLSWITCH_AUDIT_CONTROL=nats://...`
without any control code, and plain HTTP requests as curl would send them. Skipped only when
nats-server, nats-py or the `[console]` extra is not installed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from killswitch_audit.control import ControlPlane

pytest.importorskip("starlette", reason="the console needs the [console] extra (starlette)")
pytest.importorskip("uvicorn", reason="the console needs the [console] extra (uvicorn)")


def _load(path: Path, name: str):
    """A module by path: `conftest` alone names whichever conftest.py was imported first."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_nf = _load(Path(__file__).parent.parent / "control" / "natsfixtures.py", "console_natsfixtures")
_cc = _load(Path(__file__).with_name("conftest.py"), "console_conftest_nats")
start_server = _cc.start_server

pytestmark = pytest.mark.skipif(_nf.missing_reason() is not None, reason=_nf.missing_reason() or "")

#: a trading process that never imports the control package: its KillSwitch joins the plane
#: that $KILLSWITCH_AUDIT_CONTROL names
TRADER = textwrap.dedent(
    """
    import sys
    from killswitch_audit import AuditLogger, KillSwitch
    lg = AuditLogger(sys.argv[1], segment_size_mb=1, emergency_buffer_size=1024)
    ks = KillSwitch(lg, latency_monitor=False, check_clock=False)
    print("ready", ks.allows(None), flush=True)
    for line in sys.stdin:
        if line.strip() == "EXIT":
            break
        print(ks.allows(None), flush=True)
    lg.close()
    """
)


class Trader:
    def __init__(self, log_dir: Path, url: str):
        env = dict(os.environ, KILLSWITCH_AUDIT_NO_SIGTERM="1", KILLSWITCH_AUDIT_CONTROL=url)
        env.pop("KILLSWITCH_AUDIT_CONFIG", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", TRADER, str(log_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        line = self.proc.stdout.readline()
        if line.split() != ["ready", "True"]:
            self.stop()
            raise RuntimeError(f"trader did not start: {line!r}")
        self.pid = self.proc.pid

    def allows(self) -> bool:
        self.proc.stdin.write("?\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip() == "True"

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("EXIT\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=15)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def _until(pred, timeout: float = 30.0) -> bool:
    """Polls `pred` (a bound, not a timing assert: the test fails only if it never holds)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def nats_url(tmp_path):
    s = _nf.NatsServer(tmp_path / "store")
    s.start()
    _nf.wait_jetstream(s.url)
    yield s.url
    s.stop()


@pytest.fixture
def nats_trader(tmp_path, nats_url):
    started: list[Trader] = []

    def start(name: str) -> Trader:
        t = Trader(tmp_path / f"log-{name}", nats_url)
        started.append(t)
        return t

    yield start
    for t in started:
        t.stop()


@pytest.fixture
def nats_console(tmp_path, operators_file, nats_url):
    servers: list = []

    def start(*extra: str):
        # start_server passes the URL as --control; the audit dir goes beside tmp_path
        s = start_server(operators_file, nats_url, "--audit-dir", str(tmp_path / "audit"), *extra)
        s.audit_dir = tmp_path / "audit"
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def _latched(url: str) -> list[str]:
    return [e["scope"] for e in ControlPlane(url).status().latched]


def _next_state(resp) -> dict:
    data = None
    while True:
        line = resp.readline().decode()
        if not line:
            raise EOFError("the event stream ended")
        if line.startswith("data: "):
            data = json.loads(line[6:])
        elif line == "\n" and data is not None:
            return data


def test_console_on_nats_halt_viewer_refusal_four_eyes_reset_and_stream(
    nats_url, nats_trader, nats_console, client
):
    t = nats_trader("t1")
    assert t.allows() is True
    srv = nats_console()
    victor, carol, alice, bob = (client(srv) for _ in range(4))
    for c, name in ((victor, "victor"), (carol, "carol"), (alice, "alice"), (bob, "bob")):
        assert c.login(name) == 303, name

    # the page sees the joined process through the NATS presence bucket
    assert _until(lambda: any(p["pid"] == t.pid for p in alice.state().get("processes", [])))
    first = alice.state()
    assert first["directory"].startswith("nats://") and first["latched"] == []
    assert "error" not in first, first

    # the live stream, opened before the halt
    stream = carol.opener.open(urllib.request.Request(srv.url + "/api/stream"), timeout=60)
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert _next_state(stream)["latched"] == []

    # a viewer's halt (sent without the page) is refused and changes nothing
    status, body = victor.post(
        "/api/halt", {"scope": "firm", "reason": "viewer tries", "confirm": "yes"}
    )
    assert status == 403 and "viewer" in body["error"]
    assert _latched(nats_url) == [] and t.allows() is True

    # a halter's halt blocks the trading process
    status, body = carol.post(
        "/api/halt", {"scope": "firm", "reason": "runaway algo", "confirm": "yes"}
    )
    assert status == 200, body
    assert body["result"]["applied_by"], body  # the trader acked it
    assert t.allows() is False
    assert _latched(nats_url) == ["firm"]
    halt_id = body["result"]["command_id"]

    # the event stream shows the latch and, from the commands stream, carol's halt
    deadline = time.monotonic() + 60  # a bound, not a timing assert
    s = _next_state(stream)
    while not _saw_halt(s, halt_id) and time.monotonic() < deadline:
        s = _next_state(stream)
    assert _saw_halt(s, halt_id), s
    stream.close()

    # four-eyes reset: alice requests, alice may not approve, bob approves
    status, body = alice.post("/api/reset/request", {"scope": "firm", "reason": "all clear"})
    assert status == 200, body
    rid = body["request"]["id"]
    status, body = alice.post("/api/reset/approve", {"id": str(rid)})
    assert status == 403 and "four eyes" in body["error"]
    assert t.allows() is False and _latched(nats_url) == ["firm"]
    # a halter may not approve either
    assert carol.post("/api/reset/approve", {"id": str(rid)})[0] == 403
    status, body = bob.post("/api/reset/approve", {"id": str(rid)})
    assert status == 200, body
    assert body["request"]["state"] == "approved" and body["request"]["approved_by"] == "bob"
    assert t.allows() is True and _latched(nats_url) == []

    # the plane's own history names both operators
    resets = [e for e in ControlPlane(nats_url).events() if e["kind"] == "reset"]
    assert [(e["operator"], e["second_operator"], e["reason"]) for e in resets] == [
        ("alice", "bob", "all clear")
    ]

    # and the page's timeline shows the halt, the reset command and the four-eyes steps
    def timeline_complete() -> bool:
        tl = alice.state()["timeline"]
        kinds = {(e.get("source"), e.get("kind"), e.get("operator")) for e in tl}
        return {
            ("journal", "halt", "carol"),
            ("journal", "reset", "alice"),
            ("console", "reset_requested", "alice"),
            ("console", "reset_approved", "bob"),
        } <= kinds

    assert _until(timeline_complete), alice.state()["timeline"]
    assert alice.state()["latched"] == []


def _saw_halt(s: dict, halt_id: int) -> bool:
    return [e["scope"] for e in s.get("latched", [])] == ["firm"] and any(
        e.get("source") == "journal"
        and e.get("command_id") == halt_id
        and e.get("operator") == "carol"
        and e.get("kind") == "halt"
        for e in s.get("timeline", [])
    )


def test_console_on_an_unreachable_nats_plane_says_so(tmp_path, operators_file, client):
    """No server at the URL: the console still serves, and the page names the error (it does
    not pretend the plane is calm)."""
    port = _nf.free_port()
    srv = start_server(
        operators_file, f"nats://127.0.0.1:{port}", "--audit-dir", str(tmp_path / "audit")
    )
    try:
        c = client(srv)
        assert c.login("carol") == 303
        assert _until(lambda: "error" in c.state(), 60), c.state()
        assert "127.0.0.1" in c.state()["error"]
        status, body = c.post(
            "/api/halt", {"scope": "firm", "reason": "no plane", "confirm": "yes"}
        )
        assert status == 500 and body["ok"] is False
    finally:
        srv.stop()
