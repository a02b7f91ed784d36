"""`killswitch-audit`: the command line (console script and `python -m killswitch_audit`).

This module holds `main()` and the one list of subcommands (`build_parser`); each
subcommand's arguments and work live beside it: log.py (dump, verify, stats, report), demo.py,
bench.py, control.py (halt, reset, status) and `killswitch_audit.console.cli` (console).
Shared exit codes and the one-line error are in common.py.

    killswitch-audit demo [--dir DIR] [--rate N] [--seconds S]   the README's main job
    killswitch-audit dump PATH [--format jsonl|csv|table] [--kind K ...] [--follow]
    killswitch-audit verify PATH [--key-hex HEX] [--json]        exit 0 only when clean
    killswitch-audit stats DIR [--json]                          live counters (stats.bin)
    killswitch-audit report FILE.hlog [--plot OUT.png]           latency percentiles
    killswitch-audit bench ...                                   benchmarks (bench.py)

Exit codes: 0 ok, 1 a check failed (or the log cannot be read), 2 usage. Errors are one line
on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Optional

from . import bench, control, demo, log
from .bench import cmd_bench
from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, PROG, CliError, _err
from .log import cmd_report

# --------------------------------------------------------------------------------------------
# argument parsing


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Kill switch with a lock-free audit trail: demo, inspect and verify logs.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    from ..console.cli import add_parser as add_console_parser  # the risk console (issue 15)

    demo.add_parser(sub)
    log.add_parsers(sub)  # dump, verify, stats, report
    bench.add_parser(sub)
    control.add_parsers(sub)  # halt, reset, status (issue 14)
    add_console_parser(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # report and bench own their arguments (and their --help)
    if args_list and args_list[0] in ("report", "bench"):
        cmd, rest = args_list[0], args_list[1:]
        try:
            return cmd_report(rest) if cmd == "report" else cmd_bench(rest)
        except KeyboardInterrupt:
            return 130
        except Exception as e:
            _err(cmd, f"{type(e).__name__}: {e}" if not str(e) else str(e))
            return EXIT_FAILED
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except CliError as e:
        _err(args.command, str(e))
        return e.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK
    except Exception as e:  # one line, no traceback
        from ..errors import AuditLogCorrupt, ConfigError

        if isinstance(e, (AuditLogCorrupt, ConfigError)):
            _err(args.command, str(e))
        elif isinstance(e, OSError):
            _err(args.command, f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")
        else:
            _err(args.command, f"{type(e).__name__}: {e}")
        return EXIT_FAILED
