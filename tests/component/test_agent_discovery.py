"""The agent learns its public address by itself (issue 11; no root).

A cloud metadata service served on 127.0.0.1 (tests/lab/tools/metadata_server.py) gives
this node its elastic IP: the lease carries it as a ``Candidate`` (peers probe it, never
guess it) until a peer of another site confirms it (``FakePaths.reflect``, as the prober
reports what peers see), when it moves to ``PublicIPs``. Nothing learned: one warning
naming the flags, and nothing published.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from overlayd.agent.discovery import AddressDiscovery
from overlayd.discovery.metadata import CloudMetadata, Provider
from overlayd.store.memory import MemStore
from overlayd.values.lease import LeaseRecord
from tests.component.agent_harness import Agent, add_peer, agent, until
from tests.component.fake_dataplane import FakeDataPlane
from tests.component.fake_paths import FakePaths
from tests.lab.tools.metadata_server import metadata_app, serving

EIP = IPv4Address("203.0.113.77")


async def lease_where(a: Agent, check: Callable[[LeaseRecord], bool], what: str) -> LeaseRecord:
    """Our lease once ``check`` holds for it."""

    async def done() -> bool:
        snap = await a.store.list_leases()
        return any(s.record and s.record.node == a.node and check(s.record) for s in snap.leases)

    await until(done, what)
    return await a.me()


def test_metadata_address_is_a_candidate_until_a_peer_confirms_it(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving({Provider.AWS: metadata_app("aws", str(EIP))}) as bases:
            metadata = CloudMetadata(tuple(Provider), bases=bases)
            discovery, paths = AddressDiscovery(metadata, ()), FakePaths()
            async with agent(tmp_path, paths=paths, discovery=discovery) as a:
                me = await lease_where(a, lambda me: me.candidates == (EIP,), "a candidate")
                assert me.public_ips == ()  # not confirmed: nobody may guess it yet
                assert "cloud metadata (aws): 203.0.113.77" in discovery.summary
                paths.reflect(EIP)
                me = await lease_where(a, lambda me: me.public_ips == (EIP,), "confirmed")
                assert me.candidates == ()

    asyncio.run(body())


@pytest.mark.parametrize("other_site", [True, False])
def test_nothing_learned_is_one_line_with_the_flags(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, other_site: bool
) -> None:
    """A warning when peers of another site exist (they cannot reach us), an info line
    in a network of one site (it needs no public address)."""
    caplog.set_level(logging.INFO, logger="overlayd")
    store = MemStore()

    async def body() -> None:
        await add_peer(store, 2, site="b" if other_site else "default")
        async with serving({}) as bases:  # no provider answers: every port refuses
            metadata = CloudMetadata(tuple(Provider), bases=bases)
            discovery = AddressDiscovery(metadata, (), warn_after=0.3)
            dp = FakeDataPlane(underlay_address=IPv4Address("10.0.0.9"))  # behind NAT
            async with agent(
                tmp_path, store=store, dp=dp, paths=FakePaths(), discovery=discovery
            ) as a:
                await until(_asked(discovery), "the first round")
                await asyncio.sleep(0.8)  # past warn_after
                me = await a.me()
                assert me.candidates == () and me.public_ips == ()

    asyncio.run(body())
    found = [r for r in caplog.records if "no public address learned" in r.getMessage()]
    assert len(found) == 1, found
    assert found[0].levelno == (logging.WARNING if other_site else logging.INFO)
    for flag in ("--public-ip", "--stun-server", "--cloud-metadata"):
        assert flag in found[0].getMessage()


def _asked(discovery: AddressDiscovery) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return discovery.summary != "not asked yet"

    return check
