"""Logging set-up: one line per state change, as text or JSON (``--log-format``)."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping

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

    def wait(self, key: object = None) -> float:
        """Seconds until ``allow(key)`` lets a message through again (0: now)."""
        last = self._last.get(key)
        return 0.0 if last is None else max(0.0, last + self._interval - self._clock())


Schedule = Callable[[float, Callable[[], None]], object]
"""``schedule(delay, callback)``: call back later (the event loop's ``call_later``)."""


class Churn:
    """Events of one kind of churn (leases joining, kernel passes, …) as log lines.

    On a quiet log every event gets its own line (``note``'s ``message``). Under churn, at
    most one line per ``interval``: events inside it are counted, by key, and one summary
    line (``summary(counts, seconds)``) follows when the interval is over — arranged with
    ``schedule`` so it comes even if nothing else happens; without it, by the next ``note``
    or ``flush()``. The log stays readable at thousands of events per second.
    """

    def __init__(
        self,
        emit: Callable[[str], None],
        summary: Callable[[Mapping[str, int], float], str],
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        schedule: Schedule | None = None,
    ) -> None:
        self._emit = emit
        self._summary = summary
        self._throttle = Throttle(interval, clock)
        self._clock = clock
        self._schedule = schedule
        self._counts: Counter[str] = Counter()
        self._noted = 0  # events since the last line
        self._since = 0.0  # when the last line went out
        self._pending = False  # a flush is scheduled

    def note(self, counts: Mapping[str, int], message: str | Callable[[], str]) -> None:
        """One event, adding ``counts`` to the summary; ``message``: its own line, if quiet
        (a callable is only rendered when used)."""
        if not self._noted and self._throttle.allow() is not None:
            self._since = self._clock()
            self._emit(message if isinstance(message, str) else message())
            return
        self._counts.update(counts)
        self._noted += 1
        self.flush()

    def flush(self) -> None:
        """Log the summary if the interval is over; else make sure it comes when it is."""
        if not self._noted:
            return
        wait = self._throttle.wait()
        if wait <= 0:
            now = self._clock()
            self._throttle.allow()
            self._emit(self._summary(dict(self._counts), now - self._since))
            self._counts.clear()
            self._noted = 0
            self._since = now
        elif self._schedule is not None and not self._pending:
            self._pending = True
            self._schedule(wait, self._scheduled)

    def _scheduled(self) -> None:
        self._pending = False
        self.flush()


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
