"""Quoting values from outside (etcd, the network) into messages: short, one line (pure)."""

from __future__ import annotations

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
