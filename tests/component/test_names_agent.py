"""The daemon's names (overlayd/agent/names.py) against the in-memory store: the zone
follows the leases, the CNI plugin's registrations become container names bound to our
lease, hostile records in the store name nothing."""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from contextlib import AbstractAsyncContextManager
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from overlayd.agent.names import NameService
from overlayd.cni.names import send
from overlayd.store.api import StoreKeys
from overlayd.store.memory import MemStore
from overlayd.values.names import ContainerName, DnsListen
from overlayd.values.registration import Registration
from tests.component.agent_harness import LOOPBACK, Agent, add_peer, agent, free_peer, until

ZONE = "overlay.internal"


def service(a: Agent) -> NameService:
    names = a.daemon.names
    assert names is not None
    return names


async def ask(a: Agent, name: str) -> dns.message.Message:
    port = service(a).server.bound[0][1]
    query = dns.message.make_query(name, "A")
    return await dns.asyncquery.udp(query, str(LOOPBACK), port=port, timeout=5)


async def resolves(a: Agent, name: str) -> str | None:
    reply = await ask(a, name)
    return reply.answer[0][0].to_text() if reply.answer else None


def start(tmp_path: Path, store: MemStore | None = None) -> AbstractAsyncContextManager[Agent]:
    return agent(
        tmp_path, peers=0 if store else 1, store=store, node="self",
        dns_listen=DnsListen(None, ((LOOPBACK, 0),)), names_socket=tmp_path / "names.sock",
        dns_names=("web",),
    )  # fmt: skip


def test_names_follow_the_leases(tmp_path: Path) -> None:
    async def body() -> None:
        async with start(tmp_path) as a:
            await until(lambda: _ready(a, "peer2"), "peer2's name")
            me = await a.me()
            assert await resolves(a, f"self.{ZONE}") == str(me.overlay_ip)
            assert await resolves(a, f"web.{ZONE}") == str(me.overlay_ip)
            assert await resolves(a, f"peer2.default.{ZONE}") == "10.244.2.0"
            assert (await ask(a, f"nobody.{ZONE}")).rcode() == dns.rcode.NXDOMAIN
            counted = service(a).counters()
            assert counted["answered"] >= 4 and counted["nxdomain"] >= 1
            assert counted["names"] == 5  # self, self.default, web, peer2, peer2.default
            n = await free_peer(a.store, 3)
            peer3 = await add_peer(a.store, n)
            await until(lambda: _ready(a, f"peer{n}"), "a new peer's name")
            assert await a.store.delete_lease(peer3.subnet)
            await until(lambda: _gone(a, f"peer{n}.{ZONE}"), "a deleted peer's name gone")

    asyncio.run(body())


async def _ready(a: Agent, node: str) -> bool:
    names = a.daemon.names
    if names is None or not names.server.bound:
        return False
    return await resolves(a, f"{node}.{ZONE}") is not None


async def _gone(a: Agent, name: str) -> bool:
    return (await ask(a, name)).rcode() == dns.rcode.NXDOMAIN


def test_containers_registered_by_the_plugin_get_names(tmp_path: Path) -> None:
    sock = tmp_path / "names.sock"

    async def register(reg: Registration) -> str:
        return await asyncio.to_thread(send, sock, reg)

    async def body() -> None:
        async with start(tmp_path) as a:
            await until(lambda: _ready(a, "self"), "our own name")
            me = await a.me()
            address = me.subnet.network_address + 5
            assert await register(Registration("c1", "db", address)) == "ok"
            await until(lambda: _ready(a, "db.self"), "the container's name")
            assert await resolves(a, f"db.self.{ZONE}") == str(address)
            key = f"{StoreKeys(a.store.prefix).names}{me.subnet.network_address}-24/c1"
            held = a.store.get_raw(key)
            assert held is not None and held.lease != 0  # bound to our etcd lease
            outside = IPv4Address("10.244.2.9")
            assert (await register(Registration("c2", "x", outside))).startswith("error:")
            assert (await register(Registration("c3", "x", me.overlay_ip))).startswith("error:")
            assert await register(Registration("c1")) == "ok"
            await until(lambda: _gone(a, f"db.self.{ZONE}"), "the removed container's name")

    asyncio.run(body())


def test_junk_on_the_socket_is_answered_with_an_error(tmp_path: Path) -> None:
    sock = tmp_path / "names.sock"

    def raw(line: bytes) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(sock))
            s.sendall(line)
            return s.makefile("rb").readline()

    async def body() -> None:
        async with start(tmp_path) as a:
            await until(lambda: _ready(a, "self"), "our own name")
            assert sock.stat().st_mode & 0o777 == 0o600
            for junk in (b"nonsense\n", b"x" * 5000 + b"\n", b'{"ID": "../x"}\n'):
                assert (await asyncio.to_thread(raw, junk)).startswith(b"error:")
            assert await resolves(a, f"self.{ZONE}") is not None

    asyncio.run(body())


def test_a_peers_containers_go_with_its_lease(tmp_path: Path) -> None:
    async def body() -> None:
        async with start(tmp_path) as a:
            await until(lambda: _ready(a, "peer2"), "peer2's name")
            n = await free_peer(a.store, 4)
            peer = await add_peer(a.store, n)
            snap = await a.store.list_leases()
            lease_id = next(s.lease_id for s in snap.leases if s.subnet == peer.subnet)
            name = ContainerName(peer.subnet, "c9", "api", IPv4Address(f"10.244.{n}.9"))
            await a.store.put_name(name, lease_id)
            await until(lambda: _ready(a, f"api.peer{n}"), "the peer's container name")
            await a.store.revoke(lease_id)
            await until(lambda: _gone(a, f"api.peer{n}.{ZONE}"), "its container gone")
            assert await _gone(a, f"peer{n}.{ZONE}")

    asyncio.run(body())


def test_hostile_container_records_are_logged_once_and_name_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        async with start(tmp_path) as a:
            await until(lambda: _ready(a, "peer2"), "peer2's name")
            names = StoreKeys(a.store.prefix).names
            a.store.put_raw(names + "10.244.2.0-24/evil", b'{"Name": "evil", "IP": "10.244.9.1"}')
            a.store.put_raw(names + "10.244.2.0-24/big", b"{" + b" " * 100_000 + b"}")
            a.store.put_raw(names + "junk", b"[]")
            peer2 = IPv4Network("10.244.2.0/24")
            other = ContainerName(peer2, "ok", "fine", IPv4Address("10.244.2.3"))
            await a.store.put_name(other, 0)
            await until(lambda: _ready(a, "fine.peer2"), "the well-formed record")
            assert await _gone(a, f"evil.peer2.{ZONE}")
            bad = [r for r in caplog.records if "malformed container name" in r.getMessage()]
            assert len(bad) == 3 and all(len(r.getMessage()) < 300 for r in bad)

    with caplog.at_level(logging.INFO, logger="overlayd.dns"):
        asyncio.run(body())


def test_registered_names_survive_a_restart(tmp_path: Path) -> None:
    sock = tmp_path / "names.sock"

    async def body() -> None:
        async with start(tmp_path) as a:
            await until(lambda: _ready(a, "self"), "our own name")
            address = (await a.me()).subnet.network_address + 7
            reply = await asyncio.to_thread(send, sock, Registration("c7", "cache", address))
            assert reply == "ok"
            await until(lambda: _ready(a, "cache.self"), "the container's name")
            store = a.store
        # the restart binds our lease to a fresh etcd lease and revokes the old one, and the
        # names bound to it with it: the daemon publishes them again from its state dir
        async with start(tmp_path, store) as again:
            await until(lambda: _ready(again, "cache.self"), "the name after the restart")
            assert await resolves(again, f"cache.self.{ZONE}") == str(address)

    asyncio.run(body())


def test_the_zone_is_routed_only_to_a_responder_that_listens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Port 53 on the overlay address cannot be bound here (the fake data plane puts no
    address on any interface): the error is logged and systemd-resolved is not pointed
    at a responder that is not there."""

    async def body() -> None:
        async with agent(tmp_path, node="self", dns_listen=DnsListen(53, ())) as a:
            await until(lambda: _logged(caplog, "cannot listen for DNS on"), "the bind error")
            assert a.host.routed == []
            passes = a.daemon.status.reconciles
            for _ in range(3):  # the devices set up again (as every resync does)
                a.daemon.mark_dirty(device=True)
                await until(functools.partial(_passed, a, passes), "another reconcile pass")
                passes = a.daemon.status.reconciles
            said = [r for r in caplog.records if "cannot listen for DNS" in r.getMessage()]
            assert len(said) == 1  # once, not at every pass

    with caplog.at_level(logging.INFO, logger="overlayd.dns"):
        asyncio.run(body())


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)


def test_a_socket_that_cannot_be_made_leaves_the_responder_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")

    async def body() -> None:
        listen = DnsListen(None, ((LOOPBACK, 0),))
        sock = blocker / "names.sock"  # under a file: cannot be made
        async with agent(tmp_path, peers=1, node="self", dns_listen=listen, names_socket=sock) as a:
            await until(lambda: _ready(a, "peer2"), "peer2's name")
            assert any("cannot listen on" in r.getMessage() for r in caplog.records)

    with caplog.at_level(logging.INFO, logger="overlayd.dns"):
        asyncio.run(body())


async def _passed(a: Agent, passes: int) -> bool:
    return a.daemon.status.reconciles > passes
