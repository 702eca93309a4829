"""STUN client (overlayd.discovery.stun) against a loopback responder: over a socket the
caller owns and over one of its own, retransmissions, silence, forged and hostile answers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from ipaddress import IPv4Address
from typing import Any, TypeVar

import pytest

from overlayd.discovery.stun import (
    Retransmit,
    StunClient,
    StunServer,
    parse_server,
    query_all,
    query_from_port,
)
from overlayd.values.errors import ConfigError, DiscoveryError
from overlayd.values.stun import StunMapping
from tests.component.stun_responder import Responder, attribute, binding_response, message

PUBLIC = IPv4Address("203.0.113.40")
FAST = Retransmit(rto=0.05, requests=3, final=1.0)
T = TypeVar("T")


class Owner(asyncio.DatagramProtocol):
    """Plays the prober: owns the socket and hands STUN datagrams to the client."""

    def __init__(self) -> None:
        self.client: StunClient | None = None
        self.other: list[bytes] = []

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self.client is None or not self.client.datagram_received(data, addr):
            self.other.append(data)


@contextlib.asynccontextmanager
async def responder(**kwargs: Any) -> AsyncIterator[tuple[Responder, tuple[str, int]]]:
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(
        lambda: Responder(**kwargs), local_addr=("127.0.0.1", 0)
    )
    try:
        yield server, transport.get_extra_info("sockname")
    finally:
        transport.close()


@contextlib.asynccontextmanager
async def owned_socket(
    retransmit: Retransmit = FAST,
) -> AsyncIterator[tuple[StunClient, Owner, asyncio.DatagramTransport]]:
    loop = asyncio.get_running_loop()
    transport, owner = await loop.create_datagram_endpoint(Owner, local_addr=("127.0.0.1", 0))
    owner.client = StunClient(transport.sendto, retransmit=retransmit)
    try:
        yield owner.client, owner, transport
    finally:
        transport.close()


def run(body: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(body())  # type: ignore[arg-type]


def test_query_through_the_callers_socket() -> None:
    async def body() -> None:
        async with responder(claim=PUBLIC) as (_, server), owned_socket() as (client, owner, tr):
            mapping = await client.query(server)
            assert mapping == StunMapping(PUBLIC, tr.get_extra_info("sockname")[1])
            owner.datagram_received(b"OVPR" + bytes(100), server)  # a probe: not STUN
            assert owner.other == [b"OVPR" + bytes(100)]

    run(body)


def test_query_from_a_port_of_its_own() -> None:
    async def body() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            free = probe.getsockname()[1]
        async with responder(claim=PUBLIC) as (_, server):
            port, mapping = await query_from_port(server, port=free, host="127.0.0.1")
        assert port == free and mapping == StunMapping(PUBLIC, free)

    run(body)


def test_lost_requests_are_retransmitted_with_the_same_transaction() -> None:
    async def body() -> None:
        async with responder(drop=2, claim=PUBLIC) as (seen, server), owned_socket() as (c, _, _):
            assert (await c.query(server)).address == PUBLIC
            assert len(seen.transactions) == 3 and len(set(seen.transactions)) == 1

    run(body)


def test_a_silent_server_is_given_up_after_the_schedule() -> None:
    async def body() -> None:
        async with responder(drop=99) as (seen, server), owned_socket() as (client, _, _):
            with pytest.raises(DiscoveryError, match=r"no answer to 3 requests in 0\.35 s"):
                await client.query(server)
            assert len(seen.transactions) == 3

    run(body)


def test_forged_and_hostile_answers_are_dropped() -> None:
    async def body() -> None:
        async with (
            responder(drop=1, claim=PUBLIC) as (seen, server),
            owned_socket() as (client, _, _),
        ):
            query = asyncio.create_task(client.query(server))
            while not seen.transactions:
                await asyncio.sleep(0.005)
            tid = seen.transactions[0]
            # Right transaction, wrong sender: a forgery from another port.
            forged = binding_response(tid, IPv4Address("198.51.100.66"), 1)
            assert client.datagram_received(forged, ("127.0.0.1", server[1] + 1))
            # Right sender, mapping to loopback; then garbage with the magic cookie.
            loop_answer = binding_response(tid, IPv4Address("127.0.0.1"), 2)
            assert client.datagram_received(loop_answer, server)
            assert client.datagram_received(bytes(4) + b"\x21\x12\xa4\x42" + bytes(40), server)
            assert (await query).address == PUBLIC
            assert client.rejects() == {"malformed": 1, "no-address": 1, "transaction": 1}

    run(body)


def test_an_error_response_ends_the_transaction() -> None:
    async def body() -> None:
        async with responder(drop=99) as (seen, server), owned_socket() as (client, _, _):
            query = asyncio.create_task(client.query(server))
            while not seen.transactions:
                await asyncio.sleep(0.005)
            code = attribute(0x0009, struct.pack("!HBB", 0, 4, 0) + b"Bad Request")
            client.datagram_received(
                message(0x0111, seen.transactions[0], code, fingerprint=True), server
            )
            with pytest.raises(DiscoveryError, match="400 'Bad Request'"):
                await query
            assert len(seen.transactions) == 1

    run(body)


def test_query_all_sorts_and_reports() -> None:
    async def body() -> None:
        async with (
            responder(claim=PUBLIC) as (_, one),
            responder(drop=99) as (_, silent),
            owned_socket() as (client, _, _),
        ):
            servers = [StunServer("127.0.0.1", silent[1]), StunServer("127.0.0.1", one[1])]
            result = await query_all(client, servers)
            assert [s for s, _ in result.mappings] == [StunServer("127.0.0.1", one[1])]
            assert [s for s, _ in result.reasons] == [StunServer("127.0.0.1", silent[1])]
            assert not result.symmetric
            assert "saw 203.0.113.40:" in result.describe()

    run(body)


def test_parse_server() -> None:
    assert parse_server("stun.example.net:3479") == StunServer("stun.example.net", 3479)
    assert parse_server("198.51.100.1") == StunServer("198.51.100.1", 3478)
    for bad in ("", "host:", "host:0", "host:70000", ":3478", "a b:1"):
        with pytest.raises(ConfigError, match="--stun-server"):
            parse_server(bad)
