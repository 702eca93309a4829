"""The agent publishes the endpoints seen by others (issue 11; no root): what its path
keeper says it saw of peers behind NAT (``Seen``) and what peers saw of it
(``Endpoints``) go into its lease; with WireGuard it reads the endpoints its device
learned from peers' handshakes and hands them to the path keeper."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from overlayd.agent.daemon import WIREGUARD_SEEN_INTERVAL
from overlayd.store.api import DEFAULT_PREFIX, StoreKeys
from overlayd.store.memory import MemStore
from overlayd.values.keys import PublicKey
from overlayd.values.lease import NodeEndpoints, SeenEndpoints
from overlayd.values.wireguard import Endpoint
from tests.builders import config, record, wg_key
from tests.component.agent_harness import NETWORK, Agent, add_peer, agent, converged, until
from tests.component.fake_dataplane import VXLAN_INDEX, FakeDataPlane
from tests.component.fake_paths import FakePaths

PEER = IPv4Network("10.244.9.0/24")
PROBE, WG = Endpoint.parse("203.0.113.2:8473"), Endpoint.parse("203.0.113.2:40000")


def test_seen_and_endpoints_go_into_the_lease_and_out_again(tmp_path: Path) -> None:
    async def body() -> None:
        paths = FakePaths()
        async with agent(tmp_path, paths=paths) as a:
            await until(_lease_is(a, NodeEndpoints(), ()), "our lease, with neither")
            ours = NodeEndpoints((Endpoint.parse("198.51.100.2:8473"),))
            seen = (SeenEndpoints(PEER, PROBE, WG),)
            paths.observe(ours, seen)
            await until(_lease_is(a, ours, seen), "Endpoints and Seen published")
            paths.observe(ours, ())  # the peer adopted what we saw: our entry goes
            await until(_lease_is(a, ours, ()), "Seen emptied")

    asyncio.run(body())


def test_the_wireguard_device_endpoints_reach_the_path_keeper(tmp_path: Path) -> None:
    async def body() -> None:
        store, dp, paths = MemStore(), FakeDataPlane(), FakePaths()
        await add_peer(store, 9, site="b", backend_type="wireguard", public_key=wg_key(9),
                       wireguard_port=51820)  # fmt: skip
        key = PublicKey.from_base64(wg_key(9))
        dp.wg_learned[key] = WG  # as if from its handshake
        cfg = config(Network=NETWORK, Backend={"Type": "wireguard"})
        async with agent(tmp_path, store=store, dp=dp, paths=paths, cfg=cfg):

            async def learned() -> bool:
                return any(seen.get(key) == WG for seen in paths.wireguard_learned)

            await until(learned, "the learned endpoint handed to the path keeper")

    asyncio.run(body())


def test_without_peers_behind_nat_the_device_endpoints_are_not_read(tmp_path: Path) -> None:
    async def body() -> None:
        store, dp, paths = MemStore(), FakeDataPlane(), FakePaths()
        paths.natted = False  # every peer has a public address of its own
        await add_peer(store, 9, site="b", backend_type="wireguard", public_key=wg_key(9),
                       wireguard_port=51820)  # fmt: skip
        cfg = config(Network=NETWORK, Backend={"Type": "wireguard"})
        async with agent(tmp_path, store=store, dp=dp, paths=paths, cfg=cfg):
            await asyncio.sleep(2.5 * WIREGUARD_SEEN_INTERVAL)
            assert dp.peer_reads == 0
            paths.natted = True  # a peer behind NAT appeared
            await until(lambda: _read(dp), "the device's endpoints read")

    asyncio.run(body())


async def _read(dp: FakeDataPlane) -> bool:
    return dp.peer_reads > 0


def _lease_is(
    a: Agent, endpoints: NodeEndpoints, seen: tuple[SeenEndpoints, ...]
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        snap = await a.store.list_leases()
        mine = [s.record for s in snap.leases if s.record and s.record.node == a.node]
        return bool(mine) and mine[0].endpoints == endpoints and mine[0].seen == seen

    return check


def test_a_hostile_seen_or_endpoints_refuses_the_record_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer's lease claiming that it saw us at a loopback endpoint, or with ten
    probe ``Endpoints``: refused whole, one line each, and the rest converges."""
    caplog.set_level(logging.INFO, logger="overlayd")
    bad_seen, bad_endpoints = IPv4Network("10.244.50.0/24"), IPv4Network("10.244.51.0/24")

    async def body() -> None:
        async with agent(tmp_path, peers=2) as a:
            keys = StoreKeys(DEFAULT_PREFIX)
            good = json.loads(record(str(bad_seen), node="x", node_id="x", n=50).to_json())
            loopback = [{"Subnet": "10.244.1.0-24", "Probe": "127.0.0.1:1"}]
            a.store.put_raw(keys.lease(bad_seen), json.dumps({**good, "Seen": loopback}))
            hostile = {**good, "Endpoints": {"Probe": ["203.0.113.2:8473"] * 10}}
            a.store.put_raw(keys.lease(bad_endpoints), json.dumps(hostile))
            await until(converged(a), "the well-formed leases converged")
            await add_peer(a.store, 7)  # more events and passes after the bad records
            await until(converged(a), "convergence with a later peer")
            routes = a.dp.state(VXLAN_INDEX).routes
            assert bad_seen not in routes and bad_endpoints not in routes

    asyncio.run(body())
    lines = [r.getMessage() for r in caplog.records if "ignoring malformed lease" in r.getMessage()]
    assert len(lines) == 2, lines
    assert any("loopback" in line for line in lines)
    assert any("Endpoints.Probe has 10 items, at most 4" in line for line in lines)
    assert all(len(line) < 400 for line in lines)


def test_endpoints_inside_the_overlay_network_are_not_published(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Peers would refuse our whole lease for them: we publish nothing and say why."""
    caplog.set_level(logging.INFO, logger="overlayd")

    async def body() -> None:
        paths = FakePaths()
        async with agent(tmp_path, paths=paths) as a:
            await until(_lease_is(a, NodeEndpoints(), ()), "our lease")
            paths.observe(NodeEndpoints((Endpoint.parse("10.244.9.1:8473"),)), ())

            async def warned() -> bool:
                return any("not publishing the endpoints" in r.getMessage() for r in caplog.records)

            await until(warned, "the warning")
            assert await _lease_is(a, NodeEndpoints(), ())()

    asyncio.run(body())
