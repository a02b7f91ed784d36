"""Scopes: what a halt applies to, their canonical text and their 64-bit ids in records.

A halt of a scope covers every order whose attributes match all of the scope's non-None
fields (the rule itself is enforced by the core gate; `Scope.covers` is its Python
statement, used by tests and tools). The firm scope (all None) has id 0; any other scope's
id is the first 8 bytes (little-endian) of BLAKE2b over its canonical text.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple, Optional

__all__ = ["FIRM", "Scope", "scope_id"]


def _esc(v: str) -> str:
    return v.replace("%", "%25").replace(";", "%3B").replace("=", "%3D")


def _unesc(v: str) -> str:
    return v.replace("%3D", "=").replace("%3B", ";").replace("%25", "%")


class _ScopeFields(NamedTuple):
    account: Optional[str]
    strategy: Optional[str]
    symbol_id: Optional[int]
    venue: Optional[str]


class Scope(_ScopeFields):
    """What a halt applies to. All None: the whole firm. A halt of a scope covers every order
    whose attributes match all of the scope's non-None fields. Frozen and hashable (a tuple:
    hashing and comparing it runs in C, which keeps the order gate cheap)."""

    __slots__ = ()

    def __new__(
        cls,
        account: Optional[str] = None,
        strategy: Optional[str] = None,
        symbol_id: Optional[int] = None,
        venue: Optional[str] = None,
    ) -> Scope:
        for name, v in (("account", account), ("strategy", strategy), ("venue", venue)):
            if v is not None and not isinstance(v, str):
                raise TypeError(f"Scope.{name} must be a str or None, not {type(v).__name__}")
        if symbol_id is not None:
            if isinstance(symbol_id, bool) or not isinstance(symbol_id, int):
                raise TypeError(
                    f"Scope.symbol_id must be an int or None, not {type(symbol_id).__name__}"
                )
            if not 0 <= symbol_id <= 0xFFFF_FFFF:
                raise ValueError(f"Scope.symbol_id must be in 0..2**32-1, got {symbol_id}")
        return tuple.__new__(cls, (account, strategy, symbol_id, venue))

    @property
    def is_firm(self) -> bool:
        return (
            self.account is None
            and self.strategy is None
            and self.symbol_id is None
            and (self.venue is None)
        )

    def covers(self, order: Optional[Scope]) -> bool:
        """True when a halt of this scope applies to an order with the attributes `order`."""
        if order is None:
            return self.is_firm
        return (
            (self.account is None or self.account == order.account)
            and (self.strategy is None or self.strategy == order.strategy)
            and (self.symbol_id is None or self.symbol_id == order.symbol_id)
            and (self.venue is None or self.venue == order.venue)
        )

    @property
    def text(self) -> str:
        """Canonical text, e.g. ``account=A1;symbol_id=7`` (``firm`` for the firm scope)."""
        parts = []
        if self.account is not None:
            parts.append(f"account={_esc(self.account)}")
        if self.strategy is not None:
            parts.append(f"strategy={_esc(self.strategy)}")
        if self.symbol_id is not None:
            parts.append(f"symbol_id={int(self.symbol_id)}")
        if self.venue is not None:
            parts.append(f"venue={_esc(self.venue)}")
        return ";".join(parts) if parts else "firm"

    @classmethod
    def parse(cls, text: str) -> Scope:
        """The scope whose `text` is `text` (ValueError if malformed)."""
        text = text.strip()
        if text == "firm":
            return FIRM
        fields: dict[str, Any] = {}
        for part in text.split(";"):
            key, sep, value = part.partition("=")
            if not sep or key not in cls._fields or key in fields:
                raise ValueError(f"malformed scope text {text!r}")
            fields[key] = int(value) if key == "symbol_id" else _unesc(value)
        return cls(**fields)

    @property
    def scope_id(self) -> int:
        """Stable 64-bit id written in the `c` field of records (0 for the firm scope)."""
        return scope_id(self)

    def __str__(self) -> str:
        return self.text


FIRM = Scope()

_ID_CACHE: dict[Scope, int] = {FIRM: 0}


def scope_id(scope: Optional[Scope]) -> int:
    """Stable 64-bit id of a scope: first 8 bytes (LE) of BLAKE2b(canonical text); firm: 0."""
    if scope is None:
        return 0
    sid = _ID_CACHE.get(scope)
    if sid is None:
        digest = hashlib.blake2b(scope.text.encode("utf-8"), digest_size=8).digest()
        sid = int.from_bytes(digest, "little") or 1
        if len(_ID_CACHE) < 100_000:
            _ID_CACHE[scope] = sid
    return sid


def check_scope(scope: Any) -> Scope:
    if scope is None:
        return FIRM
    if isinstance(scope, Scope):
        return scope
    raise TypeError(f"scope must be a Scope or None, not {type(scope).__name__}")


_TEXT_CACHE: dict[Scope, str] = {FIRM: "firm"}


def scope_key(scope: Scope) -> tuple[int, str]:
    """(id, canonical text) of a scope, cached: the stop path pays two dict lookups."""
    text = _TEXT_CACHE.get(scope)
    if text is None:
        text = scope.text
        if len(_TEXT_CACHE) < 100_000:
            _TEXT_CACHE[scope] = text
    return scope_id(scope), text
