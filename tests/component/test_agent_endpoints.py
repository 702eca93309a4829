"""The agent publishes the endpoints seen by others (issue 11; no root): what its path
keeper says it saw of peers behind NAT (``Seen``) and what peers saw of it
(``Endpoints``) go into its lease; with WireGuard it reads the endpoints its device
learned from peers' handshakes and hands them to the path keeper."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Network
from pathlib import Path

from overlayd.store.memory import MemStore
from overlayd.values.keys import PublicKey
from overlayd.values.lease import NodeEndpoints, SeenEndpoints
from overlayd.values.wireguard import Endpoint
from tests.builders import config, wg_key
from tests.component.agent_harness import NETWORK, Agent, add_peer, agent, until
from tests.component.fake_dataplane import FakeDataPlane
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


def _lease_is(
    a: Agent, endpoints: NodeEndpoints, seen: tuple[SeenEndpoints, ...]
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        snap = await a.store.list_leases()
        mine = [s.record for s in snap.leases if s.record and s.record.node == a.node]
        return bool(mine) and mine[0].endpoints == endpoints and mine[0].seen == seen

    return check
