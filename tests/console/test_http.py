"""The console's rules, enforced by a real server (uvicorn subprocess) on plain HTTP requests,
as curl would send them: nothing here goes through the page."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest
from killswitch_audit.control import ControlPlane

pytest.importorskip("starlette", reason="the console needs the [console] extra (starlette)")
pytest.importorskip("uvicorn", reason="the console needs the [console] extra (uvicorn)")


def _latched(control) -> list[str]:
    return [e["scope"] for e in ControlPlane(control).status().latched]


def test_login_required_everywhere(console_server, client):
    srv = console_server()
    c = client(srv)
    for path in ("/api/me", "/api/state", "/api/stream"):
        assert c.get(path)[0] == 401, path
    status, headers, _ = c.get("/")
    assert status == 303 and headers["location"] == "/login"
    assert c.post("/api/halt", {"scope": "firm", "reason": "x" * 10, "confirm": "yes"})[0] == 401


def test_session_cookie_flags_and_security_headers(console_server, client):
    srv = console_server()
    c = client(srv)
    _, headers, _ = c.get("/login")
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    assert "default-src 'self'" in headers["content-security-policy"]
    assert c.login("alice") == 303


def test_viewer_halt_is_403_and_changes_nothing(console_server, client, traders, control):
    t = traders("t1")
    srv = console_server()
    c = client(srv)
    assert c.login("victor") == 303
    status, body = c.post(
        "/api/halt", {"scope": "firm", "reason": "viewer tries", "confirm": "yes"}
    )
    assert status == 403 and "viewer" in body["error"]
    assert _latched(control) == []
    assert t.allows() is True
    # a viewer may not request a reset either, nor a halter
    status, _ = c.post("/api/reset/request", {"scope": "firm", "reason": "nope nope"})
    assert status == 403
    h = client(srv)
    assert h.login("carol") == 303
    status, _ = h.post("/api/reset/request", {"scope": "firm", "reason": "nope nope"})
    assert status == 403


def test_post_without_or_with_wrong_csrf_is_403(console_server, client, traders, control):
    t = traders("t1")
    srv = console_server()
    c = client(srv)
    assert c.login("carol") == 303
    fields = {"scope": "firm", "reason": "no token", "confirm": "yes"}
    assert c.post("/api/halt", fields, csrf=False)[0] == 403
    assert c.post("/api/halt", {**fields, "csrf": "forged"}, csrf=False)[0] == 403
    # another session's token is no good either
    other = client(srv)
    assert other.login("alice") == 303
    assert c.post("/api/halt", {**fields, "csrf": other.csrf}, csrf=False)[0] == 403
    # the login form needs its token too
    fresh = client(srv)
    fresh.get("/login")
    status, _, _ = fresh.request(
        "POST", "/login", {"operator": "carol", "password": "carol-password-3"}
    )
    assert status == 403
    assert _latched(control) == [] and t.allows() is True


def test_halt_by_halter_blocks_traders_and_is_journaled_with_the_operator(
    console_server, client, traders, control
):
    ts = [traders("t1"), traders("t2")]
    srv = console_server()
    c = client(srv)
    assert c.login("carol") == 303
    status, body = c.post(
        "/api/halt",
        {"scope": "account=A1", "mode": "halt", "reason": "runaway algo", "confirm": "yes"},
    )
    assert status == 200, body
    assert len(body["result"]["applied_by"]) == 2 and body["result"]["missing"] == []
    assert [t.allows("account=A1") for t in ts] == [False, False]
    assert [t.allows("account=B2") for t in ts] == [True, True]
    ev = ControlPlane(control).events()
    assert [(e["kind"], e["scope"], e["operator"], e["reason"]) for e in ev] == [
        ("halt", "account=A1", "carol", "runaway algo")
    ]
    state = c.state()
    assert state["latched"] == [{"scope": "account=A1", "state": "HALTED", "command_id": 1}]
    assert {p["pid"] for p in state["processes"]} == {t.pid for t in ts}
    assert state["latency"]["samples"] == 2
    # reduce-only
    status, body = c.post(
        "/api/halt",
        {"scope": "strategy=mm", "mode": "reduce_only", "reason": "wind down", "confirm": "yes"},
    )
    assert status == 200, body
    a = ts[0].ask("strategy=mm")
    assert (a["allows"], a["reduce"]) == (False, True)


def test_bad_fields_are_named_and_nothing_is_applied(console_server, client, traders, control):
    t = traders("t1")
    srv = console_server()
    c = client(srv)
    assert c.login("alice") == 303
    cases = [
        ({"scope": "acct=A1", "reason": "good reason", "confirm": "yes"}, "scope"),
        ({"scope": "account=A1;account=B", "reason": "good reason", "confirm": "yes"}, "scope"),
        ({"scope": "symbol_id=xyz", "reason": "good reason", "confirm": "yes"}, "scope"),
        ({"scope": "account=" + "A" * 40, "reason": "good reason", "confirm": "yes"}, "scope"),
        ({"scope": "", "reason": "good reason", "confirm": "yes"}, "scope"),
        ({"scope": "firm", "reason": "", "confirm": "yes"}, "reason"),
        ({"scope": "firm", "reason": "x" * 501, "confirm": "yes"}, "reason"),
        ({"scope": "firm", "reason": "good reason"}, "confirm"),
        ({"scope": "firm", "reason": "good reason", "confirm": "yes", "mode": "pause"}, "mode"),
    ]
    for fields, bad in cases:
        status, body = c.post("/api/halt", fields)
        assert status == 400, (fields, body)
        assert bad in body["errors"], (fields, body)
    # two bad fields: both named
    status, body = c.post("/api/halt", {"scope": "nonsense", "reason": "", "confirm": "yes"})
    assert status == 400 and set(body["errors"]) == {"scope", "reason"}
    assert "malformed scope text" in body["errors"]["scope"]
    status, body = c.post("/api/reset/request", {"scope": "venue=", "reason": "ok reason"})
    assert status == 400 and "scope" in body["errors"]
    status, body = c.post("/api/reset/approve", {"id": "1; drop"})
    assert status == 400 and "id" in body["errors"]
    assert _latched(control) == [] and t.allows() is True
    assert ControlPlane(control).events() == []


def test_four_eyes_reset(console_server, client, traders, control):
    t = traders("t1")
    srv = console_server()
    alice, bob = client(srv), client(srv)
    assert alice.login("alice") == 303 and bob.login("bob") == 303
    assert (
        alice.post("/api/halt", {"scope": "firm", "reason": "incident", "confirm": "yes"})[0] == 200
    )
    assert t.allows() is False
    status, body = alice.post("/api/reset/request", {"scope": "firm", "reason": "all clear"})
    assert status == 200, body
    rid = body["request"]["id"]
    # a second request for the same scope while one is pending: refused, named
    status, body = bob.post("/api/reset/request", {"scope": "firm", "reason": "me too"})
    assert status == 400 and "already pending" in body["errors"]["scope"]
    # the requester may not approve her own request
    status, body = alice.post("/api/reset/approve", {"id": str(rid)})
    assert status == 403 and "four eyes" in body["error"]
    assert t.allows() is False and _latched(control) == ["firm"]
    status, body = bob.post("/api/reset/approve", {"id": str(rid)})
    assert status == 200, body
    assert body["request"]["state"] == "approved" and body["request"]["approved_by"] == "bob"
    assert t.allows() is True and _latched(control) == []
    resets = [e for e in ControlPlane(control).events() if e["kind"] == "reset"]
    assert [(e["operator"], e["second_operator"], e["reason"]) for e in resets] == [
        ("alice", "bob", "all clear")
    ]
    # approving twice: refused
    assert bob.post("/api/reset/approve", {"id": str(rid)})[0] == 409
    # the timeline shows the steps with their operators
    kinds = {(e.get("kind"), e.get("operator")) for e in alice.state()["timeline"]}
    assert ("reset_requested", "alice") in kinds and ("reset_approved", "bob") in kinds
    # and so does the console's own audit log, a verified hash chain
    srv.stop()
    from killswitch_audit import verify_audit_log
    from killswitch_audit.console.journal import read_events

    assert verify_audit_log(srv.audit_dir).ok
    steps = [(e["kind"], e["operator"]) for e in read_events(srv.audit_dir)]
    for step in [
        ("login", "alice"),
        ("login", "bob"),
        ("reset_requested", "alice"),
        ("refused", "alice"),
        ("reset_approved", "bob"),
    ]:
        assert step in steps, steps


def test_expired_reset_request_is_refused(console_server, client, traders, control):
    t = traders("t1")
    srv = console_server("--reset-ttl", "1")
    alice, bob = client(srv), client(srv)
    assert alice.login("alice") == 303 and bob.login("bob") == 303
    assert (
        alice.post("/api/halt", {"scope": "firm", "reason": "incident", "confirm": "yes"})[0] == 200
    )
    status, body = alice.post("/api/reset/request", {"scope": "firm", "reason": "all clear"})
    rid = body["request"]["id"]
    time.sleep(1.3)
    status, body = bob.post("/api/reset/approve", {"id": str(rid)})
    assert status == 409 and "expired" in body["error"]
    assert t.allows() is False and _latched(control) == ["firm"]
    assert [r["state"] for r in bob.state()["pending"]] == ["expired"]
    srv.stop()
    from killswitch_audit.console.journal import read_events

    kinds = [(e["kind"], e["operator"]) for e in read_events(srv.audit_dir)]
    assert ("reset_expired", "alice") in kinds and ("refused", "bob") in kinds, kinds


def test_wrong_password_refused_then_rate_limited(console_server, client):
    srv = console_server()
    c = client(srv)
    for _ in range(5):
        assert c.login("carol", "wrong-password") == 401
    assert c.get("/api/me")[0] == 401
    # the sixth try for that name is refused even with the right password
    assert c.login("carol") == 429
    # another operator from the same address is not locked out by carol's count...
    assert client(srv).login("alice") == 303
    # ...until the address's own limit (20 failures) is reached: unknown names count too
    for i in range(15):
        assert c.login(f"nobody{i}", "whatever-pass") == 401
    assert client(srv).login("alice") == 429


def test_stream_pushes_a_halt(console_server, client, traders, control):
    import urllib.request

    traders("t1")
    srv = console_server()
    c = client(srv)
    assert c.login("carol") == 303
    req = urllib.request.Request(srv.url + "/api/stream")
    resp = c.opener.open(req, timeout=30)
    assert resp.headers["content-type"].startswith("text/event-stream")

    def next_state() -> dict:
        data = None
        while True:
            line = resp.readline().decode()
            if line.startswith("data: "):
                data = json.loads(line[6:])
            elif line == "\n" and data is not None:
                return data

    first = next_state()
    assert first["latched"] == []
    ControlPlane(control).halt("venue=XNAS", operator="ops-cli", reason="from the shell")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        s = next_state()
        if s["latched"]:
            break
    assert s["latched"][0]["scope"] == "venue=XNAS"
    # the halt is published before it is journaled: the journal's entry follows
    while time.monotonic() < deadline:
        if any(e.get("operator") == "ops-cli" for e in s["timeline"]):
            break
        s = next_state()
    assert any(e.get("operator") == "ops-cli" for e in s["timeline"])
    resp.close()


def _run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "killswitch_audit", "console", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_add_operator_cli(tmp_path):
    ops = tmp_path / "ops.json"
    r = _run_cli(
        "add-operator", "dora", "--role", "halter", "--operators", str(ops),
        "--password-stdin", stdin="dora-password-9\n",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(ops).st_mode) == 0o600
    doc = json.loads(ops.read_text())
    entry = doc["operators"]["dora"]
    assert entry["role"] == "halter" and entry["password"].startswith("scrypt$")
    assert "dora-password-9" not in ops.read_text()
    from killswitch_audit.console.auth import Operators

    assert Operators(ops).authenticate("dora", "dora-password-9").role == "halter"
    assert Operators(ops).authenticate("dora", "dora-password-8") is None
    for bad, msg in (
        (["bad name"], "operator name"),
        (["eve", "--role", "god"], "invalid choice"),
    ):
        args = ["add-operator", *bad, "--operators", str(ops), "--password-stdin"]
        if "--role" not in bad:
            args += ["--role", "viewer"]
        r = _run_cli(*args, stdin="long-enough-pw\n")
        assert r.returncode == 2 and msg in r.stderr, r.stderr
    r = _run_cli(
        "add-operator", "eve", "--role", "viewer", "--operators", str(ops), "--password-stdin",
        stdin="short\n",
    )  # fmt: skip
    assert r.returncode == 2 and "at least" in r.stderr


def test_unsafe_or_missing_operators_file_refuses_to_start(tmp_path, control):
    ops = tmp_path / "ops.json"
    r = subprocess.run(
        [sys.executable, "-m", "killswitch_audit", "console", "--operators", str(ops),
         "--control", str(control), "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "does not exist" in r.stderr
    from killswitch_audit.console.auth import add_operator

    add_operator(ops, "zed", "viewer", "zed-password-0")
    os.chmod(ops, 0o666)
    r = subprocess.run(
        [sys.executable, "-m", "killswitch_audit", "console", "--operators", str(ops),
         "--control", str(control), "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "writable by group or others" in r.stderr


def test_operators_file_decides_at_each_action(tmp_path, console_server, control, client):
    """A role lowered or an operator removed in the file applies to open sessions at once."""
    from killswitch_audit.console.auth import add_operator

    ops = tmp_path / "ops.json"
    add_operator(ops, "hal", "halter", "hal-password-00")
    srv = console_server(operators=ops)
    c = client(srv)
    assert c.login("hal", "hal-password-00") == 303
    add_operator(ops, "hal", "viewer", "hal-password-00")
    status, body = c.post("/api/halt", {"scope": "firm", "reason": "demoted", "confirm": "yes"})
    assert status == 403 and "viewer" in body["error"]
    ops.write_text(json.dumps({"version": 1, "operators": {}}))
    status, body = c.post("/api/halt", {"scope": "firm", "reason": "removed", "confirm": "yes"})
    assert status == 401
    assert _latched(control) == []


def test_tls_serves_https_with_secure_host_cookie(tmp_path, console_server):
    import shutil
    import ssl
    import urllib.request

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    srv = console_server("--tls-cert", str(cert), "--tls-key", str(key))
    assert srv.url.startswith("https://")
    ctx = ssl.create_default_context(cafile=str(cert))
    with urllib.request.urlopen(srv.url + "/login", context=ctx, timeout=30) as r:
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("__Host-ksa_session=")
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert "max-age" in r.headers["strict-transport-security"]
