"""The DNS responder's sockets: UDP and TCP (RFC 1035, RFC 7766) on each listen address.

Each datagram is answered at once on the event loop (``Responder.respond`` is
synchronous and bounded), so a flood costs CPU but never memory: what the socket buffer
cannot hold, the kernel drops. TCP connections are capped (``max_connections``; beyond
that a new one is closed at once) and each message must arrive within ``idle`` seconds,
so slow clients cannot pile up. Failures to bind are the caller's to report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import cast

from overlayd.dns.wire import TCP_SIZE, UDP_SIZE, Responder
from overlayd.runtime.logs import Throttle

log = logging.getLogger("overlayd.dns")


@dataclass(frozen=True)
class TcpLimits:
    max_connections: int = 32
    idle: float = 5.0  # seconds the next message (or the rest of one) may take
    queries_per_connection: int = 100


DEFAULT_TCP = TcpLimits()
UDP_RCVBUF = 1 << 20
"""Bytes of receive buffer asked for the UDP socket (the kernel doubles it): a pause of
the event loop (a garbage collection, a reconcile pass of thousands of peers) is absorbed
instead of dropping queries. The default buffer (~200 KiB) holds about 300 small
datagrams: 60 ms at 5,000 queries/s."""
SO_RCVBUFFORCE = 33  # Linux (asm-generic/socket.h); the socket module does not name it


def _grow_receive_buffer(sock: socket.socket) -> None:
    """``UDP_RCVBUF`` for ``sock``: beyond ``net.core.rmem_max`` as root (the daemon), else
    as much as that limit allows."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, UDP_RCVBUF)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, respond: Callable[[bytes, int], bytes | None]) -> None:
        self._respond = respond
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)  # not a subclass in uvloop

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        reply = self._respond(data, UDP_SIZE)
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for an earlier reply: nothing to do


class DnsServer:
    """Serves ``responder`` on UDP and TCP at each bound address."""

    def __init__(self, responder: Responder, limits: TcpLimits = DEFAULT_TCP) -> None:
        self._responder, self._limits = responder, limits
        self._udp: dict[IPv4Address, asyncio.DatagramTransport] = {}
        self._tcp: dict[IPv4Address, asyncio.Server] = {}
        self._ports: dict[IPv4Address, int] = {}
        self._open: dict[asyncio.StreamWriter, asyncio.Task[None] | None] = {}
        self._throttle = Throttle(60.0)

    @property
    def bound(self) -> list[tuple[IPv4Address, int]]:
        """The (address, port) pairs served now, sorted."""
        return sorted(self._ports.items())

    async def bind(self, address: IPv4Address, port: int) -> None:
        """Serve on ``address``:``port`` (0: a free port, the same for UDP and TCP);
        OSError if it cannot be bound."""
        for _ in range(20 if port == 0 else 1):  # port 0: UDP's free port may be taken in TCP
            try:
                await self._bind(address, port)
                return
            except OSError as exc:
                error = exc
        raise error

    async def _bind(self, address: IPv4Address, port: int) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            _grow_receive_buffer(sock)
            sock.bind((str(address), port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(self._responder.respond), sock=sock
        )
        port = int(transport.get_extra_info("sockname")[1])
        try:
            server = await asyncio.start_server(self._serve_tcp, str(address), port)
        except OSError:
            transport.close()
            raise
        self._udp[address], self._tcp[address], self._ports[address] = transport, server, port
        log.info("DNS responder listening on %s:%d (UDP and TCP)", address, port)

    async def unbind(self, address: IPv4Address) -> None:
        udp, tcp = self._udp.pop(address, None), self._tcp.pop(address, None)
        self._ports.pop(address, None)
        if udp is not None:
            udp.close()
        if tcp is not None:
            tcp.close()
            log.info("DNS responder no longer listening on %s", address)

    async def close(self) -> None:
        for address in list(self._ports):
            await self.unbind(address)
        open_now = list(self._open.items())
        for writer, _ in open_now:
            writer.close()  # its handler sees the end of the stream and returns
        await asyncio.gather(*(t for _, t in open_now if t is not None), return_exceptions=True)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        limits = self._limits
        if len(self._open) >= limits.max_connections:
            if (held := self._throttle.allow("cap")) is not None:
                log.warning(
                    "DNS over TCP: %d connections open, refusing more (%d since last said)",
                    len(self._open),
                    held,
                )
            writer.close()
            return
        self._open[writer] = asyncio.current_task()
        try:
            for _ in range(limits.queries_per_connection):
                async with asyncio.timeout(limits.idle):
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    query = await reader.readexactly(size)
                reply = self._responder.respond(query, TCP_SIZE)
                if reply is None:
                    break
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went quiet or away: close its connection
        finally:
            self._open.pop(writer, None)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
