"""Where the host-local control plane lives and what its files are (docs/CONTROL.md).

<control>/            0755 (2775 with an operators' group): anyone may look
  state               the shared state file (ksa_core::control): 0664, operators write
  journal/            hash-chained control journal (an audit log): 0770 / 0700
  procs/              one presence file per joined process: 1777 (sticky)
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import KillSwitchAuditError

CONTROL_ENV = "KILLSWITCH_AUDIT_CONTROL"

#: command kinds in the state file's command ring
HALT, REDUCE, RESET = 1, 2, 3
KIND_NAMES = {HALT: "halt", REDUCE: "reduce_only", RESET: "reset"}

#: journal TEXT records written by the plane start with this, then a JSON object
TEXT_PREFIX = "control:"

_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")


class ControlError(KillSwitchAuditError):
    """A control-plane operation failed (bad location, bad argument, I/O)."""


class ControlRefused(ControlError):
    """A control-plane command was refused (permissions, missing second operator...). Nothing
    changed; the refusal was audited where the caller could write."""


def default_directory() -> Path:
    """Per user: `$XDG_RUNTIME_DIR/killswitch-audit`, else `/tmp/killswitch-audit-<uid>`."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "killswitch-audit"
    return Path(f"/tmp/killswitch-audit-{os.getuid()}")


def named_location(config: Any = None) -> Optional[str]:
    """The control plane the environment or the config names (env first), or None."""
    env = os.environ.get(CONTROL_ENV, "").strip()
    if env:
        return env
    ctl = getattr(config, "control", None)
    return getattr(ctl, "directory", None) or None


def is_nats(location: Any) -> bool:
    """True for a `nats://` / `tls://` control URL (the NATS JetStream plane)."""
    return isinstance(location, str) and location.strip().startswith(("nats://", "tls://"))


def resolve(location: Any = None, config: Any = None) -> Union[Path, str]:
    """The control plane: `location`, else env/config, else the per-user default directory.
    A directory is returned as a Path; a `nats://` URL as the str (see `_nats.parse_url`)."""
    loc = location if location is not None else named_location(config)
    if loc is None:
        return default_directory()
    if is_nats(loc):
        return str(loc).strip()
    return Path(os.fspath(loc))


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def journal(self) -> Path:
        return self.root / "journal"

    @property
    def procs(self) -> Path:
        return self.root / "procs"


def check_name(what: str, value: Any, *, required: bool = True) -> str:
    """An operator name: a str of 1..64 printable characters (ValueError naming `what`)."""
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    v = value.strip()
    if not v and not required:
        return ""
    if not _NAME.match(v) or len(v.encode()) > 64:
        raise ValueError(f"{what} must be 1..64 printable characters, got {value!r}")
    return v


def check_reason(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"reason must be a str, not {type(value).__name__}")
    v = value.strip()
    if not v:
        raise ValueError("reason must not be empty")
    if len(v) > 2000 or "\x00" in v:
        raise ValueError(f"reason must be at most 2000 characters without NUL, got {len(v)}")
    return v


def hostname() -> str:
    return socket.gethostname()[:64]
