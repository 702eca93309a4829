"""Gateway election and resignation, seen from the agents' data planes (no root).

Two agents of site ``a`` (gateway mode) share one in-memory store with a host of site
``b`` (mesh mode: every host an entry point). The site's gateway holds the WireGuard peer
of the remote host and routes its subnet over WireGuard; the other agent holds no
WireGuard peer and routes the remote subnet via the gateway's overlay address on its
VXLAN device (docs/topology.md). Paths are ``FakePaths``' (no probes).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from ipaddress import IPv4Address
from pathlib import Path

from overlayd.store.memory import MemStore
from overlayd.values.config import NetworkConfig
from overlayd.values.gateway_state import HealthReport
from overlayd.values.keys import PublicKey
from overlayd.values.lease import LeaseRecord
from tests.builders import config, wg_key
from tests.component.agent_harness import NETWORK, Agent, add_peer, agent, until
from tests.component.fake_dataplane import VXLAN_INDEX, WIREGUARD_INDEX, FakeDataPlane
from tests.component.fake_paths import FakePaths

SITE = "a"


def gateway_network() -> NetworkConfig:
    return config(
        Network=NETWORK,
        Backend={"Type": "vxlan+wireguard"},
        Topology={"Mode": "gateway", "Sites": {"b": "mesh"}},
    )


async def remote_host(store: MemStore) -> LeaseRecord:
    """A host of site ``b`` (mesh): an entry point of its site."""
    return await add_peer(
        store, 9, site="b", backend_type="vxlan+wireguard", public_key=wg_key(9),
        wireguard_port=51820,
    )  # fmt: skip


def site_agent(
    tmp_path: Path, store: MemStore, node: str, n: int
) -> AbstractAsyncContextManager[Agent]:
    """An agent of site ``a`` on underlay 10.0.0.<n>, a gateway candidate."""
    dp = FakeDataPlane(underlay_address=IPv4Address(f"10.0.0.{n}"))
    return agent(
        tmp_path, store=store, dp=dp, cfg=gateway_network(), paths=FakePaths(), node=node,
        site=SITE, gateway_candidate=True,
    )  # fmt: skip


def gateway(a: Agent, remote: LeaseRecord) -> Callable[[], Awaitable[bool]]:
    """``a`` is its site's gateway: the remote host is its WireGuard peer, routed there."""
    assert remote.public_key is not None
    key = PublicKey.from_base64(remote.public_key)

    async def check() -> bool:
        return (
            a.daemon.status.role == "gateway"
            and set(a.dp.wg_peers) == {key}
            and remote.subnet in a.dp.state(WIREGUARD_INDEX).routes
            and remote.subnet not in a.dp.state(VXLAN_INDEX).routes
        )

    return check


def member(a: Agent, gw: Agent, remote: LeaseRecord) -> Callable[[], Awaitable[bool]]:
    """``a`` reaches the remote host through ``gw``: no WireGuard peer or route of its
    own, a VXLAN route via the gateway's overlay address."""

    async def check() -> bool:
        route = a.dp.state(VXLAN_INDEX).routes.get(remote.subnet)
        return (
            a.daemon.status.role == "member"
            and not a.dp.wg_peers
            and not a.dp.state(WIREGUARD_INDEX).routes
            and route is not None
            and route.via == (await gw.me()).overlay_ip
        )

    return check


async def claimed_by(store: MemStore) -> str | None:
    claim = (await store.list_gateways()).claims.get(SITE)
    return None if claim is None else claim.node


def test_a_candidate_is_elected_and_another_takes_over_when_it_resigns(tmp_path: Path) -> None:
    async def body() -> None:
        store = MemStore()
        remote = await remote_host(store)
        async with site_agent(tmp_path, store, "gw-a", 101) as a:
            await until(gateway(a, remote), "gw-a elected and programmed as the gateway")
            async with site_agent(tmp_path, store, "gw-b", 102) as b:
                await until(member(b, a, remote), "gw-b programmed as a member")
                assert await claimed_by(store) == "gw-a"
                assert a.host.forwarding == b.host.forwarding == 1  # either may forward
                # gw-b's health check blames gw-a (as when probes through it all fail):
                # a majority of gw-a's one member, so gw-a resigns
                me_a, me_b = await a.me(), await b.me()
                report = HealthReport(SITE, me_b.node_id, me_b.node, me_a.node_id)
                await store.report_gateway(SITE, report, await store.grant(60))
                await until(gateway(b, remote), "gw-b elected and programmed as the gateway")
                await until(member(a, b, remote), "gw-a programmed as a member")
                assert await claimed_by(store) == "gw-b"

    asyncio.run(body())


def test_another_candidate_takes_over_when_the_gateways_claim_expires(tmp_path: Path) -> None:
    async def body() -> None:
        store = MemStore()
        remote = await remote_host(store)
        async with contextlib.AsyncExitStack() as gw_a:
            a = await gw_a.enter_async_context(site_agent(tmp_path, store, "gw-a", 101))
            await until(gateway(a, remote), "gw-a elected and programmed as the gateway")
            async with site_agent(tmp_path, store, "gw-b", 102) as b:
                await until(member(b, a, remote), "gw-b programmed as a member")
                await gw_a.aclose()  # gw-a stops: its claim's 2 s etcd lease runs out
                await until(gateway(b, remote), "gw-b elected and programmed as the gateway")
                assert await claimed_by(store) == "gw-b"

    asyncio.run(body())
