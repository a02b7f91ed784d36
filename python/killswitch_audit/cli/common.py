"""What every subcommand of the command line shares: the program name, exit codes, the
one-line error (`CliError`, `_err`) and the timestamp format."""

from __future__ import annotations

import sys
from datetime import datetime, timezone

PROG = "killswitch-audit"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class CliError(Exception):
    """A one-line error for stderr, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


def _err(cmd: str, message: str) -> None:
    sys.stderr.write(f"{PROG} {cmd}: error: {message}\n")


def _iso(wall_ns: int) -> str:
    s, ns = divmod(wall_ns, 1_000_000_000)
    try:
        t = datetime.fromtimestamp(s, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return str(wall_ns)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns // 1000:06d}Z"
