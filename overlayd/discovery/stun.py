"""STUN client (RFC 5389 Binding): which address and port a socket's datagrams leave by,
as a STUN server on the internet sees them (``--stun-server HOST:PORT``, repeatable).

Behind NAT, that mapping depends on the socket: the probe port and the WireGuard port map
separately. So ``StunClient`` does not own a socket: it is given the ``send`` of one (the
prober's transport, or any other) and is fed what arrives on it (``datagram_received``,
which says whether the datagram was STUN: probe datagrams begin with "OVPR", whose first
byte is never that of a STUN message). ``query_from_port`` is the same over a socket of
its own, bound to a given port, for a port no asyncio transport of ours holds.

Retransmission follows RFC 5389 section 7.2.1 with shorter times (the daemon must not wait
long for a server that is away): the same transaction id is sent ``requests`` times, the
wait doubling from ``rto``; after the last one, ``final`` times the last wait. A response
must answer an outstanding transaction and come from the server that was asked; what it
maps must be a usable unicast address (``scope_error``). Failures are ``DiscoveryError``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

from overlayd.values.errors import ConfigError, DiscoveryError
from overlayd.values.lease_rules import scope_error
from overlayd.values.stun import (
    TRANSACTION_ID_LEN,
    StunError,
    StunMapping,
    StunReject,
    decode_binding_response,
    encode_binding_request,
    looks_like_stun,
)
from overlayd.values.text import quote

log = logging.getLogger("overlayd.discovery")

DEFAULT_PORT = 3478
Address = tuple[str, int]
Send = Callable[[bytes, Address], None]
"""``send(data, (ip, port))``: a datagram transport's ``sendto``."""


@dataclass(frozen=True, order=True)
class StunServer:
    """A ``--stun-server``: a host name or IPv4 address and a UDP port."""

    host: str
    port: int = DEFAULT_PORT

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_server(text: str) -> StunServer:
    """``HOST[:PORT]`` of ``--stun-server`` (port 3478 by default)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(DEFAULT_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or " " in host:
        raise ConfigError(
            f"--stun-server {quote(text)} is not HOST:PORT", hint="e.g. stun.example.net:3478"
        )
    return StunServer(host, int(port))


@dataclass(frozen=True)
class Retransmit:
    """When requests go out: ``requests`` sends ``rto``, 2·``rto``, … apart, then a last
    wait of ``final`` times the doubled interval. RFC 5389's defaults are 0.5 s, 7 and 16;
    these give up on a silent server after 0.2+0.4+0.8+1.6 = 3 s."""

    rto: float = 0.2
    requests: int = 4
    final: float = 1.0

    def waits(self) -> tuple[float, ...]:
        """The wait after each request."""
        waits = [self.rto * 2**i for i in range(self.requests)]
        waits[-1] *= self.final
        return tuple(waits)


@dataclass
class _Transaction:
    server: Address
    answer: asyncio.Future[StunMapping]


class StunClient:
    """Binding transactions over a socket the caller owns (see the module docstring)."""

    def __init__(
        self,
        send: Send,
        *,
        retransmit: Retransmit = Retransmit(),
        transaction_id: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._send = send
        self._retransmit = retransmit
        self._transaction_id = transaction_id
        self._pending: dict[bytes, _Transaction] = {}
        self._rejects: Counter[str] = Counter()

    def rejects(self) -> dict[str, int]:
        """How many STUN-looking datagrams were dropped, by ``StunReject`` reason."""
        return dict(sorted(self._rejects.items()))

    async def query(self, server: Address) -> StunMapping:
        """What ``server`` (an ``(ip, port)``) saw our request come from; ``DiscoveryError``
        if it does not answer in time or answers with an error."""
        tid = self._transaction_id(TRANSACTION_ID_LEN)
        answer: asyncio.Future[StunMapping] = asyncio.get_running_loop().create_future()
        self._pending[tid] = _Transaction(server, answer)
        request = encode_binding_request(tid)
        try:
            for wait in self._retransmit.waits():
                try:
                    self._send(request, server)
                except OSError as exc:
                    raise DiscoveryError(f"STUN {server[0]}:{server[1]}: {exc}") from None
                done, _ = await asyncio.wait({answer}, timeout=wait)
                if done:
                    return answer.result()
        finally:
            del self._pending[tid]
            answer.cancel()
        total = sum(self._retransmit.waits())
        raise DiscoveryError(
            f"STUN {server[0]}:{server[1]}: no answer to {self._retransmit.requests} "
            f"requests in {round(total, 3):g} s"
        )

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> bool:
        """Take ``data`` if it is STUN (True: the caller must not handle it further)."""
        if not looks_like_stun(data):
            return False
        try:
            response = decode_binding_response(data, self._pending)
            transaction = self._pending[response.transaction_id]
            if (addr[0], addr[1]) != transaction.server:
                raise StunError(StunReject.TRANSACTION, f"answered from {addr[0]}:{addr[1]}")
            if (why := scope_error(response.mapping.address)) is not None:
                raise StunError(StunReject.NO_ADDRESS, f"maps to {why} address")
        except StunError as exc:
            self._rejects[exc.reason] += 1
            log.debug("from %s:%s: %s", addr[0], addr[1], exc)
            self._fail(data, exc)
            return True
        if not transaction.answer.done():
            transaction.answer.set_result(response.mapping)
        return True

    def _fail(self, data: bytes, exc: StunError) -> None:
        # An error response ends its transaction (RFC 5389 section 7.3.4); any other bad
        # answer is dropped and the transaction waits on (a retransmission may do better).
        if exc.reason is not StunReject.ERROR_RESPONSE:
            return
        transaction = self._pending.get(data[8:20])
        if transaction is not None and not transaction.answer.done():
            transaction.answer.set_exception(DiscoveryError(str(exc)))


class _Endpoint(asyncio.DatagramProtocol):
    """A socket of our own for ``query_from_port``: everything it hears goes to the client."""

    def __init__(self) -> None:
        self.client: StunClient | None = None

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self.client is not None:
            self.client.datagram_received(data, addr)


async def resolve(server: StunServer) -> Address:
    """The IPv4 address and port of ``server``; ``DiscoveryError`` if it has none."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(
            server.host, server.port, family=socket.AF_INET, type=socket.SOCK_DGRAM
        )
    except OSError as exc:
        raise DiscoveryError(f"STUN {server}: cannot resolve {server.host}: {exc}") from None
    return cast(Address, infos[0][4][:2])


async def query_from_port(
    server: Address, *, port: int = 0, host: str = "0.0.0.0", retransmit: Retransmit = Retransmit()
) -> tuple[int, StunMapping]:
    """Ask ``server`` from a socket of our own bound to ``host:port`` (0: any port); the
    port bound and what the server saw. ``DiscoveryError`` if the port is taken."""
    loop = asyncio.get_running_loop()
    try:
        transport, endpoint = await loop.create_datagram_endpoint(
            _Endpoint, local_addr=(host, port), family=socket.AF_INET
        )
    except OSError as exc:
        raise DiscoveryError(f"STUN: cannot bind {host}:{port}: {exc}") from None
    try:
        endpoint.client = StunClient(transport.sendto, retransmit=retransmit)
        bound: int = transport.get_extra_info("sockname")[1]
        return bound, await endpoint.client.query(server)
    finally:
        transport.close()


@dataclass(frozen=True)
class StunResult:
    """What asking several servers from one socket learned, each sorted by server."""

    mappings: tuple[tuple[StunServer, StunMapping], ...]
    reasons: tuple[tuple[StunServer, str], ...]

    @property
    def symmetric(self) -> bool:
        """Servers saw different mappings: the NAT maps per destination (hole punching
        through it will not work; a relay will)."""
        return len({mapping for _, mapping in self.mappings}) > 1

    def describe(self) -> str:
        """One line for the log and ``overlayctl``."""
        seen = ", ".join(f"{s} saw {m.address}:{m.port}" for s, m in self.mappings)
        why = "; ".join(f"{s}: {r}" for s, r in self.reasons)
        parts = [p for p in (seen, why and f"failed: {why}") if p] or ["no servers"]
        return "STUN: " + "; ".join(parts) + (" (symmetric NAT)" if self.symmetric else "")


async def query_all(client: StunClient, servers: Iterable[StunServer]) -> StunResult:
    """Ask every server through ``client``, in parallel; never raises."""
    ordered = sorted(set(servers))

    async def one(server: StunServer) -> StunMapping:
        return await client.query(await resolve(server))

    outcomes = await asyncio.gather(*(one(s) for s in ordered), return_exceptions=True)
    mappings, reasons = [], []
    for server, outcome in zip(ordered, outcomes, strict=True):
        if isinstance(outcome, StunMapping):
            mappings.append((server, outcome))
        elif isinstance(outcome, DiscoveryError):
            reasons.append((server, str(outcome)))
        else:
            raise outcome
    return StunResult(tuple(mappings), tuple(reasons))
