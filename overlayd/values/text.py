"""Values from outside (etcd, the network): quoting them into messages (short, one line)
and reading a bounded JSON object (pure)."""

from __future__ import annotations

import json
from typing import Any

QUOTE_LIMIT = 64
"""How many characters of a value from outside (etcd, the network) a message quotes."""


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` cut to ``limit`` characters (with ``…`` and the full length).

    Values from etcd or the network can be megabytes; messages must stay one short line.
    Containers are not rendered whole first: only their first items are looked at.
    """
    if isinstance(value, (list, tuple, dict, set, frozenset)) and len(value) > limit:
        head = list(value)[:limit] if not isinstance(value, dict) else list(value.items())[:limit]
        text = repr(head)
        size = f"{len(value)} items"
    else:
        text = repr(value)
        size = f"{len(text)} chars"
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({size})"


def json_object(value: bytes, limit: int, what: str) -> dict[str, Any]:
    """``value`` parsed as a JSON object, its size checked first (at most ``limit`` bytes);
    ``ValueError`` naming ``what`` (already quoted) otherwise."""
    if len(value) > limit:
        raise ValueError(f"{what} is {len(value)} bytes, at most {limit}")
    try:
        raw = json.loads(value)
    except (ValueError, RecursionError):
        raise ValueError(f"{what} is not JSON") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{what} must be a JSON object")
    return raw
