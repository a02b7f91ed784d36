"""Fixtures of the risk-console tests: an operators file, a real console server (a
`killswitch-audit console` subprocess on a free port), an HTTP client with its own cookie jar,
and the control tests' real trading processes."""

from __future__ import annotations

import http.cookiejar
import importlib.util
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "control_conftest", Path(__file__).parent.parent / "control" / "conftest.py"
)
_control = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_control)
Trader = _control.Trader

#: operator -> (role, password)
OPERATORS = {
    "alice": ("risk", "alice-password-1"),
    "bob": ("risk", "bob-password-22"),
    "carol": ("halter", "carol-password-3"),
    "victor": ("viewer", "victor-password-4"),
}


@pytest.fixture
def operators() -> dict:
    """operator -> password"""
    return {k: pw for k, (_, pw) in OPERATORS.items()}


@pytest.fixture(scope="session")
def operators_file(tmp_path_factory) -> Path:
    from killswitch_audit.console.auth import add_operator

    path = tmp_path_factory.mktemp("ops") / "operators.json"
    for name, (role, pw) in OPERATORS.items():
        add_operator(path, name, role, pw)
    return path


@pytest.fixture
def control(tmp_path: Path) -> Path:
    from killswitch_audit.control import init_directory

    d = tmp_path / "control"
    init_directory(d)
    return d


@pytest.fixture
def traders(tmp_path: Path, control: Path):
    started: list = []

    def start(name: str) -> Trader:
        t = Trader(tmp_path / f"log-{name}-{len(started)}", control, name, None)
        started.append(t)
        return t

    yield start
    for t in started:
        t.stop()


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, control: Path | str):
        self.proc, self.url, self.control = proc, url, control
        # a nats:// URL (str) has no parent: its tests pass --audit-dir and set this
        self.audit_dir = control.parent / "console-audit" if isinstance(control, Path) else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(operators: Path, control: Path | str, *extra: str) -> Server:
    """`control` is a control directory, or a nats:// URL (then pass --audit-dir)."""
    if "--audit-dir" not in extra:
        extra = ("--audit-dir", str(control.parent / "console-audit"), *extra)
    env = dict(os.environ)
    env.pop("KILLSWITCH_AUDIT_CONTROL", None)
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "killswitch_audit", "console",
            "--listen", "127.0.0.1:0",
            "--operators", str(operators),
            "--control", str(control),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip
    line = proc.stdout.readline()
    m = re.search(r"(https?://[^/ ]+)/", line)
    if not m:
        proc.kill()
        raise RuntimeError(f"console did not start: {line!r} {proc.stderr.read()}")
    return Server(proc, m.group(1), control)


@pytest.fixture
def console_server(operators_file: Path, control: Path):
    servers: list[Server] = []

    def start(*extra: str, operators: Path | None = None) -> Server:
        s = start_server(operators or operators_file, control, *extra)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


class Client:
    """One browser-less user: a cookie jar, the session's CSRF token after login."""

    def __init__(self, base: str):
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect()
        )
        self.csrf: str | None = None

    def request(self, method: str, path: str, fields: dict | None = None, headers=None):
        data = urllib.parse.urlencode(fields).encode() if fields is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/x-www-form-urlencoded")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with self.opener.open(req, timeout=60) as r:
                return r.status, r.headers, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read().decode()

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, fields: dict, csrf: bool = True):
        f = dict(fields)
        if csrf and self.csrf is not None:
            f["csrf"] = self.csrf
        status, _, body = self.request("POST", path, f)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def login(self, name: str, password: str | None = None) -> int:
        status, _, page = self.get("/login")
        token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        pw = OPERATORS[name][1] if password is None else password
        status, _, _ = self.request(
            "POST", "/login", {"csrf": token, "operator": name, "password": pw}
        )
        if status == 303:
            _, _, body = self.get("/api/me")
            self.csrf = json.loads(body)["csrf"]
        return status

    def state(self) -> dict:
        s, _, body = self.get("/api/state")
        assert s == 200, body
        return json.loads(body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k):  # the tests look at the 303 itself
        return None


@pytest.fixture
def client():
    def make(server: Server) -> Client:
        return Client(server.url)

    return make
