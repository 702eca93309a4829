"""Logging set-up: one line per state change, as text or JSON (``--log-format``)."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable

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


class Throttle:
    """Lets one message per ``key`` through per ``interval`` seconds; counts the rest.

    ``allow(key)`` returns None when the message should be dropped, else how many were
    dropped since the last one let through (so that line can say so).
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last: dict[object, float] = {}
        self._dropped: dict[object, int] = {}

    def allow(self, key: object = None) -> int | None:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._dropped.pop(key, 0)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, sort_keys=True)


def setup_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # the etcd client logs every reconnect attempt of its watch at WARNING; ours say enough
    logging.getLogger("etcd3aio").setLevel(logging.ERROR)
