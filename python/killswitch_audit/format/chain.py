"""The hash chain over a segment's records (SHA-256, or HMAC-SHA-256 with a key) and the
one parser of HMAC keys (bytes, or hex text as in $KILLSWITCH_AUDIT_HMAC_KEY)."""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from typing import Any, Optional, Union

from .layout import CHAIN_SIZE, RECORD_SIZE

# --------------------------------------------------------------------------------------------
# Hash chain


class ChainHasher:
    """Running hash chain of one segment: SHA-256 (or HMAC-SHA256 with `key`) over
    `prev_chain || segment_index (u64 LE) || record bytes in file order`."""

    __slots__ = ("_h", "records")

    def __init__(self, prev_chain: bytes, segment_index: int, key: Optional[bytes] = None):
        if len(prev_chain) != CHAIN_SIZE:
            raise ValueError(f"prev_chain must be {CHAIN_SIZE} bytes, got {len(prev_chain)}")
        self._h: Any = hmac.new(key, digestmod=hashlib.sha256) if key else hashlib.sha256()
        self._h.update(prev_chain)
        self._h.update(struct.pack("<Q", segment_index))
        self.records = 0

    def update(self, records: Union[bytes, bytearray, memoryview]) -> None:
        """Feed whole records (a multiple of 64 bytes)."""
        n = len(records)
        if n % RECORD_SIZE:
            raise ValueError("the chain is fed whole 64-byte records")
        self._h.update(records)
        self.records += n // RECORD_SIZE

    def digest(self) -> bytes:
        """The chain value after the records fed so far (the hasher can go on)."""
        return self._h.copy().digest()


def chain_digest(
    prev_chain: bytes,
    segment_index: int,
    records: Union[bytes, bytearray, memoryview],
    key: Optional[bytes] = None,
) -> bytes:
    """Chain value over `records` (whole 64-byte records) of segment `segment_index`."""
    h = ChainHasher(prev_chain, segment_index, key)
    h.update(records)
    return h.digest()


HMAC_KEY_ENV = "KILLSWITCH_AUDIT_HMAC_KEY"


def parse_hmac_key(value: Union[bytes, bytearray, str, None]) -> Optional[bytes]:
    """An HMAC key from bytes or a hex string (None or empty: no key); ValueError if bad hex."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value) or None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise ValueError("HMAC key must be hex digits (e.g. 64 hex characters)") from None
    raise TypeError(f"HMAC key must be bytes or a hex str, not {type(value).__name__}")


def hmac_key_from_env(var: str = HMAC_KEY_ENV) -> Optional[bytes]:
    """The hex HMAC key in environment variable `var`, or None when unset/empty."""
    return parse_hmac_key(os.environ.get(var))
