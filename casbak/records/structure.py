"""Canonical record hashing and dotted-path comparison of nested values."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any, Iterator

from casbak.records.model import KEY_ADDED, KEY_CHANGED, KEY_REMOVED, KeyChange

ROOT_PATH = "."
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_\-]+$")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def _json_default(value: Any) -> Any:
    # Parquet and TOML produce values JSON has no type for; give each a stable text form.
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "base64:" + base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


# One encoder for every record: json.dumps would build a new one per call.
_CANONICAL_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def canonical_json(value: Any) -> str:
    """Encode a value as JSON with sorted keys and no spaces, so equal records encode equally."""
    return _CANONICAL_ENCODER.encode(value)


def record_digest(value: Any) -> int:
    """Return a 128-bit BLAKE2b digest of the canonical form, as an int (smaller in memory than bytes)."""
    encoded = canonical_json(value).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(encoded, digest_size=16).digest(), "big")


def display_value(value: Any) -> str:
    """Show a value as JSON text: numbers bare, strings quoted."""
    return json.dumps(value, ensure_ascii=False, default=_json_default)


def child_path(parent: str, key: Any) -> str:
    """Append a mapping key: `a.b` for plain names, `a["x.y"]` for names with other characters."""
    text = key if isinstance(key, str) else display_value(key)
    if _PLAIN_KEY.match(text):
        return text if parent == ROOT_PATH else f"{parent}.{text}"
    quoted = f"[{json.dumps(text, ensure_ascii=False)}]"
    return quoted if parent == ROOT_PATH else f"{parent}{quoted}"


def index_path(parent: str, index: int) -> str:
    return f"[{index}]" if parent == ROOT_PATH else f"{parent}[{index}]"


def lookup_key(record: Any, dotted: str) -> Any:
    """Return the value at a dotted field name (`meta.id`) of a record, or MISSING."""
    value = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


def diff_values(old: Any, new: Any, path: str = ROOT_PATH) -> list[KeyChange]:
    """List every leaf that differs between two nested values, in key order.

    Mappings are compared key by key and lists index by index, so an insertion in the
    middle of a list shows as changes of every later index plus one added index.
    """
    return list(_walk_differences(old, new, path))


def _walk_differences(old: Any, new: Any, path: str) -> Iterator[KeyChange]:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=lambda k: (type(k).__name__, str(k))):
            below = child_path(path, key)
            if key not in new:
                yield KeyChange(below, KEY_REMOVED, old=old[key])
            elif key not in old:
                yield KeyChange(below, KEY_ADDED, new=new[key])
            else:
                yield from _walk_differences(old[key], new[key], below)
        return
    if isinstance(old, list) and isinstance(new, list):
        for index in range(max(len(old), len(new))):
            below = index_path(path, index)
            if index >= len(new):
                yield KeyChange(below, KEY_REMOVED, old=old[index])
            elif index >= len(old):
                yield KeyChange(below, KEY_ADDED, new=new[index])
            else:
                yield from _walk_differences(old[index], new[index], below)
        return
    # Canonical text distinguishes 1 from 1.0 and True from 1, and == does not.
    if canonical_json(old) != canonical_json(new):
        yield KeyChange(path, KEY_CHANGED, old=old, new=new)


def swapped_fields(old: Any, new: Any, changed: list[str]) -> list[tuple[str, str]]:
    """Return pairs of top-level fields whose values traded places, such as chosen and rejected."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return []
    pairs = []
    names = sorted(n for n in changed if n in old and n in new)
    for position, first in enumerate(names):
        for second in names[position + 1 :]:
            if canonical_json(old[first]) == canonical_json(new[second]) and canonical_json(
                old[second]
            ) == canonical_json(new[first]):
                pairs.append((first, second))
    return pairs
