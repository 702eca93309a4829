"""The DNS responder over real loopback sockets (overlayd/dns/): answers, and what hostile
input (random bytes, truncated, oversize, responses, floods) does not stop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from overlayd.dns.fastpath import plain_question
from overlayd.dns.server import DEFAULT_TCP, SO_RCVBUFFORCE, DnsServer, TcpLimits
from overlayd.dns.wire import Responder
from overlayd.planning.zone_builder import build_zone
from tests.builders import node_lease

LOOPBACK = IPv4Address("127.0.0.1")


def synchronous(body: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """A test written as a coroutine, run on its own event loop."""

    @functools.wraps(body)
    def run() -> None:
        asyncio.run(body())

    return run


ZONE = "overlay.internal"


@asynccontextmanager
async def serving(
    aliases: tuple[str, ...] = (), limits: TcpLimits = DEFAULT_TCP
) -> AsyncIterator[tuple[Responder, int]]:
    records = [
        node_lease(1, "192.0.2.1", site="aws", dns_names=aliases),
        node_lease(2, "192.0.2.2", site="gcp"),
    ]
    leases = {r.subnet: r for r in records}
    responder = Responder()
    responder.set_zone(build_zone(ZONE, IPv4Network("10.244.0.0/16"), "node1", leases, {}))
    server = DnsServer(responder, limits)
    await server.bind(LOOPBACK, 0)
    try:
        yield responder, server.bound[0][1]
    finally:
        await server.close()


async def ask(port: int, name: str, rtype: str = "A", tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, rtype)
    if tcp:
        return await dns.asyncquery.tcp(query, str(LOOPBACK), port=port, timeout=5)
    return await dns.asyncquery.udp(query, str(LOOPBACK), port=port, timeout=5)


def addresses(reply: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in reply.answer for rd in rrset]


@synchronous
async def test_answers_a_ptr_soa_ns_over_udp_and_tcp() -> None:
    async with serving(("peer0.org1",)) as (_, port):
        for tcp in (False, True):
            reply = await ask(port, "node2.overlay.internal", tcp=tcp)
            assert addresses(reply) == ["10.244.2.0"]
            assert reply.flags & dns.flags.AA and not reply.flags & dns.flags.RA
            assert reply.answer[0].ttl == 5
            assert addresses(await ask(port, "node1.aws.overlay.internal", tcp=tcp)) == [
                "10.244.1.0"
            ]
            assert addresses(await ask(port, "peer0.org1.overlay.internal", tcp=tcp)) == [
                "10.244.1.0"
            ]
            ptr = await ask(port, "0.2.244.10.in-addr.arpa", "PTR", tcp=tcp)
            assert addresses(ptr) == ["node2.overlay.internal."]
            soa = await ask(port, ZONE, "SOA", tcp=tcp)
            assert soa.answer[0].rdtype == dns.rdatatype.SOA
            assert addresses(await ask(port, ZONE, "NS", tcp=tcp)) == ["node1.overlay.internal."]


@synchronous
async def test_unknown_names_nxdomain_other_zones_refused() -> None:
    async with serving() as (responder, port):
        nx = await ask(port, "nobody.overlay.internal")
        assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority
        refused = await ask(port, "example.com")
        assert refused.rcode() == dns.rcode.REFUSED and not refused.answer
        assert not refused.flags & dns.flags.AA
        chaos = dns.message.make_query("version.bind", "TXT", "CH")
        reply = await dns.asyncquery.udp(chaos, str(LOOPBACK), port=port, timeout=5)
        assert reply.rcode() == dns.rcode.REFUSED
        assert responder.counters.refused == 2 and responder.counters.nxdomain == 1


def udp_send(port: int, payloads: list[bytes], wait: float = 0.5) -> list[bytes | None]:
    """Send each payload from one socket; what came back for each (None: nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(wait)
        out: list[bytes | None] = []
        for payload in payloads:
            sock.sendto(payload, (str(LOOPBACK), port))
            try:
                out.append(sock.recv(65535))
            except TimeoutError:
                out.append(None)
        return out


@synchronous
async def test_malformed_truncated_oversize_and_responses() -> None:
    good = dns.message.make_query("node1.overlay.internal", "A")
    wire = good.to_wire()
    as_response = dns.message.make_response(good).to_wire()
    two_questions = bytearray(wire)
    two_questions[5] = 2  # QDCOUNT 2, one question present: FORMERR
    async with serving() as (responder, port):
        replies = await asyncio.to_thread(
            udp_send,
            port,
            [b"", b"\x01\x02\x03", wire[:-3], wire + b"\x00" * 5000, as_response,
             bytes(two_questions), os.urandom(200)],
        )  # fmt: skip
        empty, short, truncated, oversize, response, two, rand = replies
        assert empty is None and short is None and oversize is None and response is None
        assert truncated is not None and dns.message.from_wire(truncated).rcode() == 1  # FORMERR
        assert truncated[:2] == wire[:2]  # the query's id
        assert two is not None and dns.message.from_wire(two).rcode() == 1
        assert rand is None or len(rand) == 12  # random bytes: dropped or a bare header
        assert responder.counters.malformed >= 2
        # and it still answers
        assert addresses(await ask(port, "node1.overlay.internal")) == ["10.244.1.0"]


def flood(port: int, count: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        query = dns.message.make_query("node1.overlay.internal", "A").to_wire()
        for i in range(count):
            payload = os.urandom(40) if i % 2 else query
            with contextlib.suppress(BlockingIOError):  # our send buffer full: the flood
                sock.sendto(payload, (str(LOOPBACK), port))


@synchronous
async def test_a_bounded_flood_does_not_stop_it_answering() -> None:
    async with serving() as (responder, port):
        await asyncio.to_thread(flood, port, 5000)
        for _ in range(50):  # let the loop drain the socket
            await asyncio.sleep(0.01)
        assert addresses(await ask(port, "node2.overlay.internal")) == ["10.244.2.0"]
        assert addresses(await ask(port, "node2.overlay.internal", tcp=True)) == ["10.244.2.0"]
        assert responder.counters.queries > 0


BURST = 2000
"""Queries sent while the event loop is held: the default receive buffer (~200 KiB) holds
about 300 of them, the responder's (``UDP_RCVBUF``) all."""


def count_replies(sock: socket.socket, expected: int) -> int:
    """Replies ``sock`` receives until ``expected`` came or none came for a second."""
    sock.settimeout(1.0)
    got = 0
    with contextlib.suppress(TimeoutError):
        while got < expected:
            sock.recv(65535)
            got += 1
    return got


@synchronous
async def test_a_pause_of_the_event_loop_loses_no_query() -> None:
    # a burst that arrives while the loop is busy (a garbage collection, a reconcile pass of
    # thousands of peers) waits in the socket's buffer instead of being dropped
    query = dns.message.make_query("node1.overlay.internal", "A").to_wire()
    async with serving() as (responder, port):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.bind((str(LOOPBACK), 0))
            # the test's own side must not drop replies either while its thread waits for
            # the GIL (a busy machine): room for the whole burst (SO_RCVBUFFORCE as root)
            force = SO_RCVBUFFORCE if os.geteuid() == 0 else socket.SO_RCVBUF
            client.setsockopt(socket.SOL_SOCKET, force, 8 * 2**20)
            counting = asyncio.create_task(asyncio.to_thread(count_replies, client, BURST))
            await asyncio.sleep(0.05)  # the counting thread is reading
            for _ in range(BURST):  # sent from the loop's thread: the responder reads after
                client.sendto(query, (str(LOOPBACK), port))
            assert await counting == BURST
        assert responder.counters.queries == BURST


@synchronous
async def test_tcp_connections_are_capped_and_slow_ones_cut() -> None:
    limits = TcpLimits(max_connections=2, idle=0.3)
    async with serving(limits=limits) as (_, port):
        held = [await asyncio.open_connection(str(LOOPBACK), port) for _ in range(2)]
        await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection(str(LOOPBACK), port)
        assert await reader.read(10) == b""  # the third is closed at once
        writer.close()
        for r, _ in held:  # the two idle ones are cut after ``idle``
            assert await asyncio.wait_for(r.read(10), 5) == b""
        for _, w in held:
            w.close()
        assert addresses(await ask(port, "node1.overlay.internal", tcp=True)) == ["10.244.1.0"]


@synchronous
async def test_not_ready_is_servfail() -> None:
    server = DnsServer(Responder())
    await server.bind(LOOPBACK, 0)
    try:
        reply = await ask(server.bound[0][1], "node1.overlay.internal")
        assert reply.rcode() == dns.rcode.SERVFAIL
    finally:
        await server.close()


QUESTIONS = [
    ("node1.overlay.internal", "A"),
    ("NoDe2.OVERLAY.internal", "A"),
    ("nobody.overlay.internal", "A"),
    ("node1.overlay.internal", "AAAA"),
    ("example.com", "A"),
    ("0.2.244.10.in-addr.arpa", "PTR"),
    ("overlay.internal", "SOA"),
    ("overlay.internal", "NS"),
]


@synchronous
async def test_the_plain_path_answers_as_dnspython_does() -> None:
    """Queries without EDNS take the fast path (overlayd/dns/fastpath.py); with EDNS the
    full one: both give the same answer, and the question keeps the case it was sent in."""
    async with serving() as (_, port):
        for name, rtype in QUESTIONS:
            plain = dns.message.make_query(name, rtype, use_edns=False)
            full = dns.message.make_query(name, rtype, use_edns=0)
            got = await dns.asyncquery.udp(plain, str(LOOPBACK), port=port, timeout=5)
            want = await dns.asyncquery.udp(full, str(LOOPBACK), port=port, timeout=5)
            assert got.id == plain.id and got.question[0].name.to_text() == name + "."
            assert (got.rcode(), got.flags) == (want.rcode(), want.flags), name
            assert got.answer == want.answer and got.authority == want.authority, name
            assert got.edns < 0 <= want.edns


def test_plain_question_refuses_what_it_does_not_parse() -> None:
    wire = dns.message.make_query("node1.overlay.internal", "A", use_edns=False).to_wire()
    question = plain_question(wire)
    assert question is not None and question.name == "node1.overlay.internal."
    assert plain_question(wire + b"\x00") is None  # trailing bytes
    assert plain_question(wire[:-1]) is None
    pointer = wire[:12] + b"\xc0\x0c" + wire[-4:]  # a compression pointer in a question
    assert plain_question(pointer) is None
    edns = dns.message.make_query("node1.overlay.internal", "A", use_edns=0).to_wire()
    assert plain_question(edns) is None
    dotted = wire[:12] + b"\x03a.b\x00" + wire[-4:]
    assert plain_question(dotted) is None
