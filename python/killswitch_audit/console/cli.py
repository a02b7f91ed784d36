"""`killswitch-audit console [...]` and `killswitch-audit console add-operator NAME`.

Only argparse at import time: cli.py calls `add_parser` on every run, and the web framework
(the `[console]` extra) is imported only when the console is served.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import os
import socket
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_OPERATORS = "console-operators.json"


class ConsoleUsage(Exception):
    pass


def add_parser(sub: Any) -> None:
    c = sub.add_parser(
        "console",
        help="the risk console: a web page to watch, halt and (four eyes) reset",
        description="Serves the risk console for a control plane: a host-local "
        "directory or a nats:// URL (docs/CONSOLE.md). Listens on 127.0.0.1 unless told otherwise.",
    )
    c.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT (127.0.0.1:8080)")
    c.add_argument(
        "--operators",
        default=None,
        help=f"operators file (default ./{DEFAULT_OPERATORS}; written by add-operator)",
    )
    c.add_argument("--tls-cert", metavar="F", help="TLS certificate (PEM); with --tls-key")
    c.add_argument("--tls-key", metavar="F", help="TLS private key (PEM)")
    c.add_argument(
        "--control",
        metavar="DIR|URL",
        help="control directory or nats:// URL (as for halt/status)",
    )
    c.add_argument("--config", help="YAML config (default: $KILLSWITCH_AUDIT_CONFIG or packaged)")
    c.add_argument(
        "--reset-ttl",
        type=float,
        default=300.0,
        metavar="S",
        help="seconds a reset request waits for its second operator (300)",
    )
    c.add_argument(
        "--audit-dir",
        metavar="DIR",
        help="the console's own audit log: logins, refusals, four-eyes steps "
        "(default: console-audit/ beside the operators file)",
    )
    c.add_argument("--log-level", default="warning", help=argparse.SUPPRESS)
    cs = c.add_subparsers(dest="console_command", metavar="SUBCOMMAND")
    a = cs.add_parser(
        "add-operator",
        help="add or replace an operator in the operators file (asks for the password)",
    )
    a.add_argument("name", help="operator name (letters, digits, . _ -)")
    a.add_argument("--role", required=True, choices=("viewer", "halter", "risk"))
    a.add_argument(
        "--operators", default=argparse.SUPPRESS, help=f"operators file (./{DEFAULT_OPERATORS})"
    )
    a.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin (scripts) instead of a prompt",
    )
    c.set_defaults(func=cmd_console)


def cmd_console(args: argparse.Namespace) -> int:
    try:
        if args.console_command == "add-operator":
            return _add_operator(args)
        return _serve(args)
    except ConsoleUsage as e:
        print(f"killswitch-audit console: {e}", file=sys.stderr)
        return EXIT_USAGE


def _operators_path(args: argparse.Namespace) -> Path:
    return Path(args.operators or DEFAULT_OPERATORS)


def _add_operator(args: argparse.Namespace) -> int:
    from .auth import MIN_PASSWORD, OperatorsError, add_operator

    if args.password_stdin:
        pw = sys.stdin.readline().rstrip("\r\n")
    else:
        pw = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != pw:
            raise ConsoleUsage("the passwords differ; nothing written")
    if len(pw) < MIN_PASSWORD:
        raise ConsoleUsage(f"password must have at least {MIN_PASSWORD} characters")
    path = _operators_path(args)
    try:
        added = add_operator(path, args.name, args.role, pw)
    except (ValueError, OperatorsError) as e:
        raise ConsoleUsage(str(e)) from None
    print(f"{'added' if added else 'replaced'} operator {args.name} ({args.role}) in {path}")
    return EXIT_OK


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise ConsoleUsage(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve(args: argparse.Namespace) -> int:
    import importlib.util

    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConsoleUsage(
            f"the console needs the [console] extra ({', '.join(missing)} missing): "
            "pip install 'killswitch-audit[console]'"
        )
    import uvicorn

    from ..config import load_config
    from ..control import ControlPlane
    from .app import Console, build_app
    from .auth import Operators, OperatorsError

    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConsoleUsage("--tls-cert and --tls-key go together")
    host, port = parse_listen(args.listen)
    tls = bool(args.tls_cert)
    if not _is_loopback(host) and not tls:
        print(
            f"killswitch-audit console: WARNING: listening on {host} without TLS: passwords and "
            "session cookies cross the network in clear text (use --tls-cert/--tls-key)",
            file=sys.stderr,
        )
    try:
        operators = Operators(_operators_path(args))
    except OperatorsError as e:
        raise ConsoleUsage(str(e)) from None
    config = load_config(args.config) if args.config else None
    from ..control import ControlError

    try:  # a directory, or a nats:// URL (the firm-wide plane; the `nats` extra)
        plane = ControlPlane(args.control, config)
    except (ControlError, ValueError) as e:
        raise ConsoleUsage(f"--control {args.control or '(default)'}: {e}") from None
    from .journal import ConsoleJournal

    audit_dir = Path(args.audit_dir or operators.path.parent / "console-audit")
    try:
        journal = ConsoleJournal(audit_dir)
    except Exception as e:
        raise ConsoleUsage(f"console audit log {audit_dir}: {e}") from None
    console = Console(plane, operators, secure=tls, reset_ttl_s=args.reset_ttl, journal=journal)
    app = build_app(console)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConsoleUsage(f"--listen {args.listen}: {e.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    config_u = uvicorn.Config(
        app,
        log_level=args.log_level,
        access_log=False,
        proxy_headers=False,  # the rate limiter keys on the real peer address
        server_header=False,
        ssl_certfile=args.tls_cert,
        ssl_keyfile=args.tls_key,
        timeout_graceful_shutdown=2,
    )
    real_host, real_port = sock.getsockname()[:2]
    scheme = "https" if tls else "http"
    shown = f"[{real_host}]" if family == socket.AF_INET6 else real_host
    print(
        f"killswitch-audit console: {scheme}://{shown}:{real_port}/ (control plane "
        f"{plane.directory}, operators {operators.path}, audit {audit_dir}, pid {os.getpid()})",
        flush=True,
    )

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            console.stop_streams()
            super().handle_exit(sig, frame)

    Server(config_u).run(sockets=[sock])
    return EXIT_OK
