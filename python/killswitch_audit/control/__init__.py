"""The control plane (issue 14): pull the kill switch from outside the process.

Host-local, no server: a control directory (docs/CONTROL.md) with a hash-chained journal, a
shared state file every joined process maps read-only, and one presence file per process.
Firm-wide: a `nats://` URL names a NATS JetStream plane (nats_plane.py, nats_member.py; the
`nats` extra): `ControlPlane("nats://...")` returns a `NatsControlPlane`, `join` a
`NatsMembership`; anchor.py anchors the logs off-host there.

    from killswitch_audit.control import ControlPlane, join

    membership = join(ks)              # in each trading process (None: no plane configured)
    plane = ControlPlane()             # in an operator's tool
    result = plane.halt("account=A1", operator="alice", reason="runaway algo")
    print(len(result.applied_by), result.missing)
    plane.reset("account=A1", operator="alice", reason="fixed")
    plane.status(); plane.events()
"""

from __future__ import annotations

from ._layout import CONTROL_ENV, ControlError, ControlRefused, default_directory, resolve
from .member import Membership, join
from .nats_plane import NatsControlPlane
from .plane import ControlPlane, init_directory
from .results import CommandResult, HaltResult, ProcessAck, ProcessStatus, Status

__all__ = [
    "CONTROL_ENV",
    "CommandResult",
    "ControlError",
    "ControlPlane",
    "ControlRefused",
    "HaltResult",
    "Membership",
    "NatsControlPlane",
    "ProcessAck",
    "ProcessStatus",
    "Status",
    "default_directory",
    "init_directory",
    "join",
    "resolve",
]
