"""Exception types. Every error the package raises derives from `KillSwitchAuditError`."""

from __future__ import annotations


class KillSwitchAuditError(Exception):
    """Base class of every error raised by killswitch_audit."""


class ConfigError(KillSwitchAuditError, ValueError):
    """A configuration file or value is wrong; the message names the file, the key and why."""

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None):
        self.path = path
        self.key = key
        super().__init__(message)


class AuditLogCorrupt(KillSwitchAuditError):
    """An audit log is damaged; `path` and `offset` (bytes) name the first bad place."""

    def __init__(self, message: str, *, path: str = "", offset: int = -1):
        self.path = path
        self.offset = offset
        super().__init__(f"{path}: offset {offset}: {message}" if path else message)


class AuditLoggerClosed(KillSwitchAuditError, RuntimeError):
    """The audit logger was closed (or belongs to the parent of a forked process)."""


class ResetRefused(KillSwitchAuditError):
    """A kill-switch reset was refused (not halted, no reason, same second operator...)."""
