"""The status port: ``/healthz`` (alive), ``/readyz`` (lease held, first reconcile done),
``/status``, ``/peers`` and whatever later issues add (``/metrics``, a console), on aiohttp.

A route is a path and a handler with no arguments returning ``(status, body)``: the body is
served as indented JSON with sorted keys, or as is when it is a ``Text``. Unknown paths get
a JSON 404, other methods than GET/HEAD a JSON 405. Where it listens is a ``ListenSpec``
(loopback by default, see ``health_listen``); what a client may do (deadline, sizes,
connection cap, log lines) is a ``Limits`` (see ``health_guard``).

aiohttp is imported when the server starts serving, not with this module: it costs about
0.3 s of CPU and 4 MB, which ``overlayd --help`` and a disabled port need not pay, and which
the daemon pays after its first reconcile pass (``listen`` binds the port at start, so a
port taken fails at once and early clients wait in the backlog; ``serve`` answers them).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Any

from overlayd.agent.status_guard import (
    DEFAULT_LIMITS,
    AiohttpLog,
    ConnectionGuard,
    Limits,
    TroubleLog,
)
from overlayd.agent.status_listen import IPAddress, ListenSpec, address_order, exposure
from overlayd.runtime.logs import Throttle
from overlayd.values.errors import ConfigError

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("overlayd.health")


@dataclass(frozen=True)
class Text:
    """A body served as is (e.g. Prometheus' text format), not as JSON."""

    body: str
    content_type: str = "text/plain"


Reply = tuple[int, Any]
Handler = Callable[[], Reply]
_AioHandler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]


def render(status: int, body: Any) -> web.Response:
    """The response for a handler's ``(status, body)``; one request per connection."""
    from aiohttp import web

    if isinstance(body, Text):
        resp = web.Response(status=status, text=body.body, content_type=body.content_type)
    else:
        payload = (json.dumps(body, sort_keys=True, indent=1) + "\n").encode()
        resp = web.Response(status=status, body=payload, content_type="application/json")
    resp.force_close()  # the connection's deadline is then the request's (health_guard)
    return resp


class HealthServer:
    """Serves the registered routes on every address of ``listen`` at ``port``.

    ``port`` 0 picks a free port per address (tests); ``bound`` says which.
    """

    def __init__(
        self,
        listen: ListenSpec,
        port: int,
        handlers: Mapping[str, Handler],
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self._listen, self._port, self._limits = listen, port, limits
        self._handlers = dict(handlers)
        self._trouble = TroubleLog(log, limits.log_interval)
        self._bugs = Throttle(limits.log_interval)
        self._guard: ConnectionGuard | None = None
        self._runner: web.AppRunner | None = None
        self._sockets: dict[IPAddress, socket.socket] = {}  # bound, listening
        self._servers: dict[IPAddress, asyncio.Server] = {}  # served (once ``serve`` ran)
        self._listening = False
        self._overlay: IPv4Address | None = None

    def add(self, path: str, handler: Handler) -> None:
        """Serve ``handler`` at ``path`` (before ``start``)."""
        if self._runner is not None:
            raise RuntimeError("routes are added before the server starts")
        self._handlers[path] = handler

    @property
    def open_connections(self) -> int:
        """Connections open now (never more than ``Limits.max_connections``)."""
        return self._guard.open_connections if self._guard is not None else 0

    @property
    def bound(self) -> list[tuple[IPAddress, int]]:
        """The (address, port) pairs listened on now, sorted."""
        addresses = sorted(self._sockets, key=address_order)
        return [(address, self.bound_port(address)) for address in addresses]

    async def start(self) -> None:
        """``listen``, then ``serve``."""
        self.listen()
        await self.serve()

    def listen(self) -> None:
        """Bind the fixed addresses; ``ConfigError`` if one cannot be bound. Connections
        wait in the backlog until ``serve``; aiohttp is not imported yet."""
        self._listening = True
        for address in self._listen.addresses:
            try:
                self._bind(address)
            except OSError as exc:
                self._close_sockets()
                raise ConfigError(
                    f"cannot listen on health port {address}:{self._port}: {exc.strerror}",
                    hint="is another overlayd running in this network namespace? "
                    "see --healthz-port and --healthz-ip",
                ) from None
            self._warn_exposed(address, None)

    async def serve(self) -> None:
        """Answer on every address bound (now and later); ``listen`` first."""
        from aiohttp import web

        app = web.Application(middlewares=[web.middleware(_json_errors)])
        for path, handler in sorted(self._handlers.items()):
            app.router.add_get(path, self._route(path, handler))
        limits = self._limits
        runner = web.AppRunner(
            app,
            handle_signals=False,
            shutdown_timeout=1.0,  # connections are aborted before (close_all)
            access_log=None,  # aiohttp.access would log one line per request at INFO
            logger=AiohttpLog(self._trouble),
            keepalive_timeout=limits.deadline,
            lingering_time=0,  # a body nobody reads is not waited for: the connection closes
            max_line_size=limits.max_line_size,
            max_field_size=limits.max_field_size,
            max_headers=limits.max_headers,
        )
        await runner.setup()
        self._runner = runner
        self._guard = ConnectionGuard(limits, self._trouble)
        for address in list(self._sockets):
            await self._attach(address)

    async def serve_after(self, ready: asyncio.Event, at_most: float) -> None:
        """``serve`` once ``ready`` is set, or after ``at_most`` seconds; aiohttp is imported
        on a thread meanwhile, so the event loop keeps doing the work that matters."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), at_most)
        await asyncio.to_thread(importlib.import_module, "aiohttp.web")
        await self.serve()

    async def follow_overlay(self, address: IPv4Address, network: IPv4Network) -> None:
        """With ``--healthz-ip overlay``: listen on this node's overlay ``address`` (once it
        is on the device), instead of a previous one. Failures are logged, not raised: the
        loopback port keeps serving."""
        if not self._listen.overlay or not self._listening or address == self._overlay:
            return
        wanted = set(self._listen.binds(address))
        for old in [a for a in self._sockets if a not in wanted]:  # the previous overlay address
            self._unbind(old)
        if address not in self._sockets:  # (unless it is one of the fixed addresses too)
            try:
                self._bind(address)
            except OSError as exc:  # retried when the device is configured again
                log.error(
                    "cannot listen on health port %s:%d: %s", address, self._port, exc.strerror
                )
                return
            if self._runner is not None:
                await self._attach(address)
            self._warn_exposed(address, network)
        self._overlay = address

    async def close(self) -> None:
        """Stop listening, cut open connections, release aiohttp's handlers."""
        self._close_sockets()
        if self._guard is not None:
            await self._guard.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- internals -------------------------------------------------------------------------

    def _bind(self, address: IPAddress) -> None:
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's own
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((str(address), self._port))
            sock.listen(100)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sockets[address] = sock
        log.info("health port listening on %s", _hostport(address, self.bound_port(address)))

    async def _attach(self, address: IPAddress) -> None:
        """Serve the bound socket of ``address``."""
        assert self._runner is not None and self._runner.server is not None
        assert self._guard is not None
        loop = asyncio.get_running_loop()
        self._servers[address] = await loop.create_server(
            self._guard.factory(self._runner.server), sock=self._sockets[address]
        )

    def _unbind(self, address: IPAddress) -> None:
        server = self._servers.pop(address, None)
        sock = self._sockets.pop(address, None)
        if server is not None:
            server.close()
        elif sock is not None:
            sock.close()
        if sock is not None:
            log.info("health port no longer listening on %s", address)

    def _close_sockets(self) -> None:
        for address in list(self._sockets):
            self._unbind(address)

    def bound_port(self, address: IPAddress) -> int:
        """The port listened on at ``address`` (``port`` unless that was 0)."""
        return int(self._sockets[address].getsockname()[1])

    def _warn_exposed(self, address: IPAddress, overlay: IPv4Network | None) -> None:
        who = exposure(address, overlay)
        if who is not None:
            log.warning(
                "health port on %s: /status and /peers (node names, subnets, underlay "
                "addresses) are readable by %s",
                _hostport(address, self.bound_port(address)),
                who,
            )

    def _route(self, path: str, handler: Handler) -> _AioHandler:
        async def serve(request: web.Request) -> web.StreamResponse:
            try:
                status, body = handler()
            except Exception:
                if self._bugs.allow(path) is not None:  # a bug of ours: traceback, throttled
                    log.exception("health handler for %s failed", path)
                status, body = 500, {"error": "internal error"}
            return render(status, body)

        return serve


async def _json_errors(request: web.Request, handler: _AioHandler) -> web.StreamResponse:
    """The router's 404/405 as JSON, like every other answer of this port."""
    from aiohttp import web

    try:
        return await handler(request)
    except web.HTTPNotFound:
        return render(404, {"error": f"no such path {request.path[:200]}"})
    except web.HTTPMethodNotAllowed:
        return render(405, {"error": f"method {request.method[:20]} not allowed"})


def _hostport(address: IPAddress, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
