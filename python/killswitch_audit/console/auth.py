"""Who may use the risk console: the operators file, password hashes, sessions, CSRF tokens and
the login rate limiter. Pure stdlib (hashlib.scrypt); the web framework never sees a password.

Operators file (JSON, mode 0600, written by `killswitch-audit console add-operator`):

    {"version": 1,
     "operators": {"alice": {"role": "risk", "password": "scrypt$16384$8$1$<salt>$<hash>"}}}

Roles, each including the one before: ``viewer`` (sees), ``halter`` (also halts),
``risk`` (risk officer: also requests and approves four-eyes resets).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import KillSwitchAuditError

ROLES = ("viewer", "halter", "risk")
_RANK = {r: i for i, r in enumerate(ROLES)}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# scrypt cost: N=2**14, r=8, p=1 needs 16 MiB and ~50 ms per check (OWASP's minimum is N=2**17
# at p=1 for interactive logins on fast machines; 2**14 keeps a loaded 2-core host responsive).
SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_LEN = 2**14, 8, 1, 32
MIN_PASSWORD = 10


class OperatorsError(KillSwitchAuditError):
    """The operators file is missing, malformed, or unsafe (named in the message)."""


def check_operator_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(
            f"operator name {name!r}: 1..64 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def role_allows(role: str, needed: str) -> bool:
    return _RANK.get(role, -1) >= _RANK[needed]


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def hash_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise ValueError(f"password must have at least {MIN_PASSWORD} characters")
    salt = secrets.token_bytes(16)
    h = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=SCRYPT_LEN
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(h)}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        algo, n, r, p, salt, want = encoded.split("$")
        if algo != "scrypt":
            return False
        n_, r_, p_ = int(n), int(r), int(p)
        if n_ > 2**20 or r_ > 32 or p_ > 16:  # a hostile file must not make us allocate GiBs
            return False
        got = hashlib.scrypt(
            password.encode(),
            salt=_unb64(salt),
            n=n_,
            r=r_,
            p=p_,
            dklen=len(_unb64(want)),
            maxmem=256 * 1024 * 1024,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, _unb64(want))


# A hash checked for unknown names, so a wrong name costs as much time as a wrong password.
_DUMMY = None


def _dummy_hash() -> str:
    global _DUMMY
    if _DUMMY is None:
        _DUMMY = hash_password(secrets.token_urlsafe(16))
    return _DUMMY


@dataclass(frozen=True)
class Operator:
    name: str
    role: str
    password: str  # the encoded hash


def _check_file_mode(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise OperatorsError(f"operators file {path}: not a regular file")
    if st.st_mode & 0o022:
        raise OperatorsError(
            f"operators file {path}: writable by group or others (mode {st.st_mode & 0o777:o}); "
            "chmod 600 it"
        )


def load_operators(path: Path) -> dict[str, Operator]:
    """The operators of `path` (OperatorsError naming the file and the bad entry)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise OperatorsError(
            f"operators file {path} does not exist: create it with "
            "`killswitch-audit console add-operator NAME --role ROLE --operators FILE`"
        ) from None
    except OSError as e:
        raise OperatorsError(f"operators file {path}: {e.strerror}") from None
    try:
        _check_file_mode(path, os.fstat(fd))
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(1 << 20)
    finally:
        os.close(fd)
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise OperatorsError(f"operators file {path}: not JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise OperatorsError(f"operators file {path}: expected {{'version': 1, 'operators': ...}}")
    ops = doc.get("operators")
    if not isinstance(ops, dict):
        raise OperatorsError(f"operators file {path}: 'operators' must be an object")
    out = {}
    for name, entry in ops.items():
        try:
            check_operator_name(name)
        except ValueError as e:
            raise OperatorsError(f"operators file {path}: {e}") from None
        if not isinstance(entry, dict) or entry.get("role") not in ROLES:
            raise OperatorsError(
                f"operators file {path}: operator {name!r} needs a role among {', '.join(ROLES)}"
            )
        pw = entry.get("password")
        if not isinstance(pw, str) or not pw.startswith("scrypt$") or pw.count("$") != 5:
            raise OperatorsError(
                f"operators file {path}: operator {name!r} has no scrypt password hash"
            )
        out[name] = Operator(name, entry["role"], pw)
    return out


def add_operator(path: Path, name: str, role: str, password: str) -> bool:
    """Adds or replaces `name` in `path` (created 0600 if missing), atomically. True: added."""
    check_operator_name(name)
    if role not in ROLES:
        raise ValueError(f"role {role!r}: one of {', '.join(ROLES)}")
    encoded = hash_password(password)
    path = Path(path)
    ops = load_operators(path) if path.exists() or path.is_symlink() else {}
    added = name not in ops
    ops[name] = Operator(name, role, encoded)
    doc = {
        "version": 1,
        "operators": {o.name: {"role": o.role, "password": o.password} for o in ops.values()},
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return added


class Operators:
    """The operators file, re-read when it changes (an added operator needs no restart)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._key: Optional[tuple[int, int, int]] = None
        self._ops = load_operators(self.path)
        if not self._ops:
            raise OperatorsError(f"operators file {self.path}: no operators")
        _dummy_hash()

    def get(self, name: str) -> Optional[Operator]:
        with self._lock:
            try:
                st = os.stat(self.path, follow_symlinks=False)
                key = (st.st_mtime_ns, st.st_size, st.st_ino)
                if key != self._key:
                    self._ops = load_operators(self.path)
                    self._key = key
            except (OSError, OperatorsError):
                # fail closed: an unreadable or broken file logs nobody in (sessions keep
                # their role until they end)
                self._ops = {}
            return self._ops.get(name)

    def authenticate(self, name: str, password: str) -> Optional[Operator]:
        op = self.get(name)
        ok = verify_password(password, op.password if op else _dummy_hash())
        return op if ok and op is not None else None


@dataclass
class Session:
    token: str
    csrf: str
    operator: Optional[str]  # None: the pre-login session that only carries the login form
    role: str
    created: float
    seen: float


class Sessions:
    """Server-side sessions: an unguessable cookie token -> operator, role, CSRF token.
    In memory: a restart logs everybody out (the safe direction)."""

    def __init__(
        self, idle_s: float = 1800.0, max_age_s: float = 12 * 3600.0, max_anonymous: int = 1000
    ):
        self.idle_s, self.max_age_s = idle_s, max_age_s
        #: pre-login sessions (anyone may fetch the login page) are capped, oldest dropped
        self.max_anonymous = max_anonymous
        self._by_token: dict[str, Session] = {}
        self._lock = threading.Lock()

    def new(self, operator: Optional[str], role: str = "") -> Session:
        now = time.monotonic()
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), operator, role, now, now)
        with self._lock:
            self._expire(now)
            if operator is None:
                anon = [t for t, x in self._by_token.items() if x.operator is None]
                for t in anon[: max(0, len(anon) - self.max_anonymous + 1)]:
                    del self._by_token[t]
            self._by_token[s.token] = s
        return s

    def get(self, token: Optional[str]) -> Optional[Session]:
        if not token:
            return None
        now = time.monotonic()
        with self._lock:
            s = self._by_token.get(token)
            if s is None:
                return None
            if now - s.seen > self.idle_s or now - s.created > self.max_age_s:
                del self._by_token[token]
                return None
            s.seen = now
            return s

    def drop(self, token: Optional[str]) -> None:
        with self._lock:
            self._by_token.pop(token or "", None)

    def _expire(self, now: float) -> None:
        dead = [
            t
            for t, s in self._by_token.items()
            if now - s.seen > self.idle_s or now - s.created > self.max_age_s
        ]
        for t in dead:
            del self._by_token[t]


def csrf_ok(session: Optional[Session], sent: Optional[str]) -> bool:
    return bool(session and sent) and hmac.compare_digest(session.csrf, sent)


@dataclass
class LoginLimiter:
    """At most `per_name` failed logins for one operator name and `per_client` from one client
    address within `window_s`; beyond that every login for that name or from that address
    (even a right one) is refused until the window slides. Failures only count. The address
    limit is higher because everybody behind one address (an SSH tunnel to 127.0.0.1) shares
    it; the CLI (`killswitch-audit halt`) stays available to a locked-out operator."""

    per_name: int = 5
    per_client: int = 20
    window_s: float = 300.0
    _fails: dict[str, deque] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _keys(self, client: str, name: str) -> list[tuple[str, int]]:
        return [(f"ip:{client}", self.per_client), (f"op:{name.casefold()}", self.per_name)]

    def retry_after(self, client: str, name: str) -> float:
        """Seconds until a login may be tried (0: now)."""
        now = time.monotonic()
        wait = 0.0
        with self._lock:
            for k, most in self._keys(client, name):
                q = self._fails.get(k)
                if not q:
                    continue
                while q and now - q[0] > self.window_s:
                    q.popleft()
                if len(q) >= most:
                    wait = max(wait, self.window_s - (now - q[-most]))
        return wait

    def failed(self, client: str, name: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._fails) > 10_000:  # bounded memory under a spray of names: drop
                # the windows that have slid past (never a live lockout)
                for k in [k for k, q in self._fails.items() if now - q[-1] > self.window_s]:
                    del self._fails[k]
            for k, most in self._keys(client, name):
                self._fails.setdefault(k, deque(maxlen=most)).append(now)
