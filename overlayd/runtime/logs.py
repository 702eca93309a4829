"""Logging set-up: one line per state change, as text or JSON (``--log-format``)."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping


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


Schedule = Callable[[float, Callable[[], None]], object]
"""``schedule(delay, callback)``: call back later (the event loop's ``call_later``)."""


class Churn:
    """Events of the daemon's churn (leases joining and leaving, kernel passes, …) as lines.

    On a quiet log each event gets its own line (``note``'s ``message``), up to ``burst``
    lines per ``interval`` (a lease change and the kernel pass it causes). Past that, and
    for as long as events keep coming, they are counted by key and one summary line per
    interval (``summary(counts, seconds)``) says how many there were. ``schedule``
    arranges for that summary even if no further event comes; without it the next
    ``note`` or ``flush()`` writes it. The log stays readable at thousands of events a
    second.
    """

    def __init__(
        self,
        emit: Callable[[str], None],
        summary: Callable[[Mapping[str, int], float], str],
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        schedule: Schedule | None = None,
        burst: int = 3,
    ) -> None:
        self._emit = emit
        self._summary = summary
        self._interval = interval
        self._clock = clock
        self._schedule = schedule
        self._burst = burst
        self._counts: Counter[str] = Counter()
        self._noted = 0  # events counted, not yet summarised
        self._window: float | None = None  # when the current interval began
        self._lines = 0  # own lines in the current interval
        self._summarised: float | None = None  # when the last summary went out
        self._pending = False  # a flush is scheduled

    def note(self, counts: Mapping[str, int], message: str | Callable[[], str]) -> None:
        """One event, adding ``counts`` to the summary; ``message``: its own line, if quiet
        (a callable is only rendered when used)."""
        now = self._clock()
        self._roll(now)
        if self._window is None:
            self._window, self._lines = now, 0
        quiet = self._summarised is None or now - self._summarised >= self._interval
        if quiet and not self._noted and self._lines < self._burst:
            self._lines += 1
            self._emit(message if isinstance(message, str) else message())
            return
        self._counts.update(counts)
        self._noted += 1
        self._arrange(now)

    def flush(self) -> None:
        """Write the summary if its interval is over; else make sure it comes when it is."""
        now = self._clock()
        self._roll(now)
        if self._noted:
            self._arrange(now)

    def _roll(self, now: float) -> None:
        if self._window is None or now - self._window < self._interval:
            return
        if self._noted:
            self._emit(self._summary(dict(self._counts), now - self._window))
            self._counts.clear()
            self._noted = 0
            self._summarised = now
        self._window = None

    def _arrange(self, now: float) -> None:
        if self._schedule is None or self._pending or self._window is None:
            return
        self._pending = True
        self._schedule(max(0.0, self._window + self._interval - now), self._scheduled)

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
    # --debug is ours: the libraries' debug lines (pyroute2 logs every netlink message)
    # would drown it and cost more CPU than the daemon's own work
    root.setLevel(max(level, logging.INFO))
    logging.getLogger("overlayd").setLevel(level)
    # the etcd client logs every reconnect attempt of its watch at WARNING; ours say enough
    logging.getLogger("etcd3aio").setLevel(logging.ERROR)
