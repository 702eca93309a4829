"""Limits of the status port below HTTP: a connection cap, a total deadline per connection,
and at most one log line per kind of trouble per interval.

The guard wraps each connection's protocol (aiohttp's request handler), so it works the
same whatever aiohttp version parses the requests:

* **Deadline.** Every connection serves one request (responses say ``Connection: close``),
  so a deadline on the connection is a deadline on the request: headers, body and response
  together. A connection still open when it passes is aborted — slowloris clients that
  trickle a byte a second are cut after ``deadline`` seconds whatever they send.
* **Cap.** At most ``max_connections`` are open; a new one beyond that closes the *oldest*
  at once. Refusing the newest instead would let a client holding the cap with slow
  connections lock out every real request (kubelet's probes included) for as long as it
  likes; with the oldest closed, a real request (done in milliseconds) gets through.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from overlayd.runtime.logs import Throttle
from overlayd.values.text import quote


@dataclass(frozen=True)
class Limits:
    """What one status port allows."""

    deadline: float = 5.0  # seconds a connection may take for its whole request and response
    max_connections: int = 64
    max_line_size: int = 4096  # request line
    max_field_size: int = 8190  # one header line
    max_headers: int = 32
    log_interval: float = 60.0  # at most one line per kind of trouble per interval


DEFAULT_LIMITS = Limits()


class TroubleLog:
    """Logs at most one line per kind of trouble per interval, saying how many it held back."""

    def __init__(self, log: logging.Logger, interval: float) -> None:
        self._log = log
        self._throttle = Throttle(interval)

    def note(self, kind: str, message: str) -> None:
        dropped = self._throttle.allow(kind)
        if dropped is None:
            return
        more = f" ({dropped} more since the last such line)" if dropped else ""
        self._log.warning("status port: %s%s", message, more)


class AiohttpLog(logging.Logger):
    """Stands in for aiohttp's ``aiohttp.server`` logger on our server.

    aiohttp logs each malformed request (a request line over the limit, garbage bytes, a
    header flood) with a full traceback; here each becomes one short line through a
    ``TroubleLog`` (the client's peer and the parser's reason, quoted), so a flood of bad
    requests cannot flood the log. Not registered with ``logging``: no global state.
    """

    def __init__(self, trouble: TroubleLog) -> None:
        super().__init__("overlayd.agent.status.aiohttp", logging.DEBUG)
        self._trouble = trouble

    def handle(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        text = record.getMessage()
        if text.startswith(_AIOHTTP_BAD_REQUEST):
            text = "bad request from " + text.removeprefix(_AIOHTTP_BAD_REQUEST)
        code = getattr(exc, "code", None)  # aiohttp's HttpProcessingError: code, message
        if isinstance(code, int):
            text += f" (answered {code})"
        detail = getattr(exc, "message", None) or (str(exc) if exc is not None else "")
        if detail:
            text += ": " + quote(" ".join(str(detail).split()), 100)
        self._trouble.note("bad-request", text)


_AIOHTTP_BAD_REQUEST = "Error handling request from "


class ConnectionGuard:
    """Makes guarded protocols; tracks the open connections, oldest first."""

    def __init__(self, limits: Limits, trouble: TroubleLog) -> None:
        self._limits = limits
        self._trouble = trouble
        self._open: dict[_Guarded, None] = {}  # insertion order: oldest first
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def factory(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` guarding what ``make`` builds."""
        return lambda: _Guarded(self, make)

    def _admit(self, conn: _Guarded) -> None:
        while len(self._open) >= self._limits.max_connections:
            oldest = next(iter(self._open))
            self._release(oldest)
            oldest.abort()
            self._trouble.note(
                "cap",
                f"{self._limits.max_connections} connections open: closed the oldest "
                f"(from {oldest.peer}) for a new one",
            )
        self._open[conn] = None
        self._idle.clear()

    def _release(self, conn: _Guarded) -> None:
        self._open.pop(conn, None)
        if not self._open:
            self._idle.set()

    def _expired(self, conn: _Guarded) -> None:
        self._release(conn)
        conn.abort()
        self._trouble.note(
            "deadline",
            f"closed a connection from {conn.peer} that did not finish its request "
            f"within {self._limits.deadline:g}s",
        )

    async def close_all(self, timeout: float = 1.0) -> None:
        """Abort every open connection; wait (at most ``timeout``) until they are gone."""
        for conn in list(self._open):
            conn.abort()
        if self._open:
            try:
                async with asyncio.timeout(timeout):
                    await self._idle.wait()
            except TimeoutError:
                pass
        # let the aborted handlers' tasks see their connection lost and finish
        for _ in range(3):
            await asyncio.sleep(0)


class _Guarded(asyncio.Protocol):
    """One connection: its deadline timer, then everything passed on to the inner protocol."""

    def __init__(self, guard: ConnectionGuard, make: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._make = make
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        guard = self._guard
        guard._admit(self)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(guard._limits.deadline, guard._expired, self)
        self._inner = self._make()
        self._inner.connection_made(transport)

    def abort(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            # abort, not close: close would wait for a client that does not read to drain
            cast(asyncio.Transport, self._transport).abort()

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._guard._release(self)
        if self._inner is not None:
            self._inner.connection_lost(exc)
            self._inner = None
