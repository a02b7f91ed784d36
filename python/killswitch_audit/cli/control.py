"""`killswitch-audit halt | reset | status`: the control plane from an operator's shell.

Registered by cli/__init__.py (which calls `add_parsers` once); the work is done by
`killswitch_audit.control.ControlPlane`. Exit codes: 0 done (every live joined process
acked), 1 refused, failed, or some process did not ack within the wait, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_parsers(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--control",
        metavar="DIR_OR_URL",
        help="control directory or nats://host:port[,host:port][?replicas=3] (default: "
        "$KILLSWITCH_AUDIT_CONTROL, the config's control.directory, else the per-user default)",
    )
    common.add_argument(
        "--config", help="YAML config (default: $KILLSWITCH_AUDIT_CONFIG or the packaged one)"
    )

    h = sub.add_parser(
        "halt",
        parents=[common],
        help="halt a scope on every process joined to the control plane",
        description="Journals the halt, publishes it to every joined process, and waits until "
        "each live one has applied it (exit 1 and the list of the missing ones otherwise).",
    )
    h.add_argument("--scope", default="firm", help="Scope.text, e.g. account=A1;venue=X (firm)")
    h.add_argument("--reduce-only", action="store_true", help="reduce-only instead of a halt")
    h.add_argument("--operator", required=True, help="who pulls the switch")
    h.add_argument("--reason", required=True, help="why")
    h.add_argument("--wait", type=float, help="seconds to wait for acks (control.ack_timeout_s)")
    h.add_argument("--json", action="store_true", help="print the result as JSON")
    h.set_defaults(func=cmd_halt)

    r = sub.add_parser(
        "reset",
        parents=[common],
        help="lift a scope's halt on every joined process (audited, named operator)",
    )
    r.add_argument("--scope", default="firm", help="Scope.text (default firm)")
    r.add_argument("--operator", required=True, help="who lifts it")
    r.add_argument("--reason", required=True, help="why")
    r.add_argument(
        "--second-operator", help="four eyes (required by control.require_second_operator)"
    )
    r.add_argument("--wait", type=float, help="seconds to wait for acks")
    r.add_argument("--json", action="store_true", help="print the result as JSON")
    r.set_defaults(func=cmd_reset)

    s = sub.add_parser(
        "status",
        parents=[common],
        help="joined processes (live and stale) and latched scopes of the control plane",
    )
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_status)


def _plane(args: Any, create: bool = True) -> Any:
    from ..config import load_config
    from ..control import ControlPlane

    return ControlPlane(args.control, load_config(args.config), create=create)


def _report(args: Any, verb: str, res: Any) -> int:
    if args.json:
        print(json.dumps(res.to_dict(), indent=2, sort_keys=True))
        return EXIT_OK if res.ok else EXIT_FAILED
    lat = res.latencies_ns()
    n = len(res.applied_by)
    line = f"{verb} {res.scope}: command {res.command_id} applied by {n} process(es)"
    if lat:
        p50 = lat[len(lat) // 2] / 1000
        line += f"; gate closed after p50 {p50:.0f} us, max {lat[-1] / 1000:.0f} us"
    print(line)
    for m in res.missing:
        print(f"  MISSING: pid {m.pid} ({m.name}) on {m.host}: no ack within {res.wait_s:g} s")
    for m in res.still_restricted:
        print(
            f"  STILL RESTRICTED: pid {m.pid} ({m.name}) on {m.host} refused the reset "
            f"(its audit log says why); {res.scope} stays halted there"
        )
    return EXIT_OK if res.ok else EXIT_FAILED


def cmd_halt(args: Any) -> int:
    res = _plane(args).halt(
        args.scope,
        args.reduce_only,
        operator=args.operator,
        reason=args.reason,
        wait_s=args.wait,
    )
    return _report(args, "reduce-only" if args.reduce_only else "halted", res)


def cmd_reset(args: Any) -> int:
    res = _plane(args).reset(
        args.scope,
        operator=args.operator,
        reason=args.reason,
        second_operator=args.second_operator,
        wait_s=args.wait,
    )
    return _report(args, "reset", res)


def _ago(ns: int) -> str:
    if not ns:
        return "never"
    return f"{max(0.0, (time.time_ns() - ns) / 1e9):.1f} s ago"


def cmd_status(args: Any) -> int:
    st = _plane(args).status()
    if args.json:
        print(json.dumps(st.to_dict(), indent=2, sort_keys=True))
        return EXIT_OK
    print(f"control plane {st.directory}: last command {st.last_command_id}")
    if st.latched:
        print("latched scopes:")
        for e in st.latched:
            print(f"  {e['scope']}: {e['state_name']} (command {e['command_id']})")
    else:
        print("latched scopes: none")
    live = [p for p in st.processes if not p.stale]
    print(f"processes: {len(live)} live, {len(st.processes) - len(live)} stale")
    for p in st.processes:
        states = ", ".join(f"{k}={v}" for k, v in sorted(p.states.items())) or "ACTIVE"
        print(
            f"  {'STALE ' if p.stale else ''}pid {p.pid} {p.name} on {p.host}: {states}; "
            f"last command {p.last_command_id}; heartbeat {_ago(p.heartbeat_ns)}; "
            f"control {p.control}; log {p.log_dir}"
        )
    return EXIT_OK
