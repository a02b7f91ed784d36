"""An independent decoder of the audit-log format (docs/FORMAT.md), stdlib only.

Written from the format document alone, so an auditor can check the package's reader against
something they can read in a few minutes. The tests decode the golden logs in tests/data/
with both and require identical results. Usage: `python tests/reference_decoder.py DIR [KEYHEX]`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
import sys

HEADER = struct.Struct("<8sHHIQQQIIQQQ32s32s64sQQQ")  # bytes 0..224 of the 4096-byte header
RECORD = struct.Struct("<QQQBBHIqqQII")  # 64 bytes
FIELDS = "seq wall_ns mono_ns kind flags code thread_id a b c symbol_id crc32c".split()
CLOSED, KEYED, RECOVERED = 1, 2, 4


def _crc_table() -> list:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected, init and final xor 0xFFFFFFFF)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def is_record(raw: bytes) -> bool:
    """CRC valid and not all zero."""
    return any(raw) and crc32c(raw[:60]) == struct.unpack_from("<I", raw, 60)[0]


def decode_header(raw: bytes) -> dict:
    v = HEADER.unpack_from(raw)
    if v[0] != b"KSAUDIT1" or v[1] != 1 or v[2] != 64 or v[3] != 4096:
        raise ValueError("not a version-1 segment header")
    return {
        "segment_index": v[4],
        "first_seq": v[5],
        "created_wall_ns": v[6],
        "pid": v[7],
        "flags": v[8],
        "capacity": v[9],
        "committed": v[10],
        "chain_records": v[11],
        "chain_head": v[12].hex(),
        "prev_chain": v[13].hex(),
        "host": v[14].rstrip(b"\0").decode("utf-8", "replace"),
        "writer_chained": v[16],
        "seq_reserved": v[17],
    }


def decode_segment(path: str) -> dict:
    """Header, valid records (as dicts) and the torn-tail offset, by the reading rules."""
    with open(path, "rb") as f:
        data = f.read()
    h = decode_header(data[:4096])
    slots = min(h["capacity"], (len(data) - 4096) // 64)
    records, torn, raw = [], None, []
    for i in range(slots):
        rec = data[4096 + i * 64 : 4096 + (i + 1) * 64]
        closed = h["flags"] & CLOSED
        if closed and i >= h["committed"]:
            break  # nothing at or after `committed` of a closed segment is read
        if not is_record(rec):
            if i < h["committed"]:
                raise ValueError(f"{path}: offset {4096 + i * 64}: bad committed record")
            if any(rec):
                torn = 4096 + i * 64
            break
        records.append(dict(zip(FIELDS, RECORD.unpack(rec))))
        raw.append(rec)
    if h["committed"] > len(records):
        raise ValueError(f"{path}: file holds fewer records than committed")
    return {"path": path, "header": h, "records": records, "raw": raw, "torn": torn}


def chain(key: bytes | None, prev: bytes, index: int, records: list) -> bytes:
    """SHA-256, or HMAC-SHA256 under `key`, of prev_chain || index (u64 LE) || records."""
    h = hmac.new(key, digestmod=hashlib.sha256) if key else hashlib.sha256()
    h.update(prev + struct.pack("<Q", index) + b"".join(records))
    return h.digest()


def decode_log(path: str | os.PathLike, key: bytes | None = None) -> dict:
    """Every segment of a directory in index order: records, torn tails, and whether each
    chain_head and prev_chain link verifies (HMAC when the segment is KEYED)."""
    path = os.fspath(path)
    names = sorted(n for n in os.listdir(path) if n.endswith(".seg") and n[:-4].isdigit())
    out: dict = {"records": [], "segments": [], "torn": [], "chain_ok": True}
    prev_final = bytes(32)
    for n, name in enumerate(names):
        seg = decode_segment(os.path.join(path, name))
        h = seg["header"]
        k = key if h["flags"] & KEYED else None
        if (h["flags"] & KEYED) and not key:
            out["chain_ok"] = False
        prev = bytes.fromhex(h["prev_chain"])
        if int(name[:-4]) != h["segment_index"] or (n == 0 and h["segment_index"] != 0):
            out["chain_ok"] = False
        if prev != prev_final:
            out["chain_ok"] = False
        cr = h["chain_records"]
        if cr > len(seg["raw"]):
            out["chain_ok"] = False
        elif cr or h["chain_head"] != "00" * 32 or h["flags"] & CLOSED:
            head = chain(k, prev, h["segment_index"], seg["raw"][:cr])
            out["chain_ok"] &= head.hex() == h["chain_head"]
        prev_final = chain(k, prev, h["segment_index"], seg["raw"])
        out["records"].extend(seg["records"])
        out["segments"].append(h)
        if seg["torn"] is not None:
            out["torn"].append([os.path.join(path, name), seg["torn"]])
    return out


if __name__ == "__main__":
    log = decode_log(sys.argv[1], bytes.fromhex(sys.argv[2]) if len(sys.argv) > 2 else None)
    for r in log["records"]:
        print(json.dumps(r))
    print(json.dumps({"chain_ok": log["chain_ok"], "torn": log["torn"]}), file=sys.stderr)
