"""The agent with relays (docs/nat.md, "Relays"), on MemStore and the fake data plane.

Our node (site a, no relay) has peer 2 (site b, behind NAT: no path verifies) and relay
10. Once our probes verify the relay, its round trip goes into our lease's ``RelayRTTs``;
peer 2 publishes its own. After the grace time with no direct path to peer 2, the
WireGuard device routes peer 2's subnet through the relay: in the relay's AllowedIPs;
peer 2's own WireGuard peer stays, with no AllowedIPs (its handshakes test the direct
path). When a direct path to peer 2 verifies, the pair leaves the relay after
the hold time.
"""

from __future__ import annotations

import asyncio
import time
from ipaddress import IPv4Network
from pathlib import Path

from overlayd.values.keys import PublicKey
from overlayd.values.wireguard import WgPeerConfig
from tests.builders import config, wg_key
from tests.component.agent_harness import NETWORK, Agent, add_peer, agent, until
from tests.component.fake_paths import FakePaths

PEER, RELAY = IPv4Network("10.244.2.0/24"), IPv4Network("10.244.10.0/24")
WG = {"backend_type": "wireguard", "wireguard_port": 51820}


def _peer(a: Agent, n: int) -> WgPeerConfig | None:
    return a.dp.wg_peers.get(PublicKey.from_base64(wg_key(n)))


def test_a_stranded_peer_goes_through_the_relay_and_comes_back(tmp_path: Path) -> None:
    asyncio.run(_stranded_then_direct(tmp_path))


async def _stranded_then_direct(tmp_path: Path) -> None:
    paths = FakePaths()
    cfg = config(Network=NETWORK, Backend={"Type": "wireguard"})
    async with agent(tmp_path, cfg=cfg, paths=paths, relay=False, site="a") as a:
        await add_peer(a.store, 10, site="r", public_key=wg_key(10), relay=True, **WG)
        await add_peer(a.store, 2, site="b", public_key=wg_key(2), relay_rtts=((RELAY, 6),), **WG)
        await until(lambda: _has(a, 2), "peer 2 programmed directly first")
        paths.verify(RELAY, 4.0)

        async def rtt_published() -> bool:
            return (await a.me()).relay_rtts == ((RELAY, 4),)

        await until(rtt_published, "our round trip to the relay in our lease")

        async def relayed() -> bool:
            relay, direct = _peer(a, 10), _peer(a, 2)
            return (
                direct is not None
                and direct.allowed_ips == ()
                and relay is not None
                and PEER in relay.allowed_ips
            )

        await until(relayed, "peer 2 through the relay")
        assert a.daemon.status.peers >= 1

        paths.verify(PEER, 2.0)  # a direct path to peer 2 verifies

        async def direct() -> bool:
            relay, direct = _peer(a, 10), _peer(a, 2)
            return (
                direct is not None
                and direct.allowed_ips == (PEER,)
                and relay is not None
                and relay.allowed_ips == (RELAY,)
            )

        await until(direct, "peer 2 direct again")


async def _has(a: Agent, n: int) -> bool:
    return _peer(a, n) is not None


def test_a_verified_peer_no_handshake_reaches_goes_through_the_relay(tmp_path: Path) -> None:
    asyncio.run(_silent_then_shaken(tmp_path))


async def _silent_then_shaken(tmp_path: Path) -> None:
    """Our probes verify peer 2 directly, but its WireGuard peer never completes a
    handshake (a NAT that maps WireGuard's port per destination): after the handshake
    grace, the relay carries it; when a handshake completes, it is direct again."""
    paths = FakePaths()
    cfg = config(Network=NETWORK, Backend={"Type": "wireguard"})
    async with agent(tmp_path, cfg=cfg, paths=paths, relay=False, site="a") as a:
        await add_peer(a.store, 10, site="r", public_key=wg_key(10), relay=True, **WG)
        await add_peer(a.store, 2, site="b", public_key=wg_key(2), relay_rtts=((RELAY, 6),), **WG)
        relay_key, peer_key = (PublicKey.from_base64(wg_key(n)) for n in (10, 2))
        a.dp.wg_handshakes[relay_key] = time.time()  # the relay's handshakes work
        await until(lambda: _has(a, 2), "peer 2 programmed")
        paths.verify(RELAY, 4.0)
        paths.verify(PEER, 2.0)

        async def direct() -> bool:
            peer = _peer(a, 2)
            return peer is not None and peer.allowed_ips == (PEER,) and peer.endpoint is not None

        await until(direct, "peer 2 direct, with an endpoint")

        async def relayed() -> bool:
            relay, peer = _peer(a, 10), _peer(a, 2)
            return (
                relay is not None
                and PEER in relay.allowed_ips
                and peer is not None
                and peer.allowed_ips == ()
                and peer.endpoint is not None  # it goes on trying the direct path
            )

        await until(relayed, "peer 2 through the relay once no handshake came")
        a.dp.wg_handshakes[peer_key] = time.time()  # a handshake over the direct path
        await until(direct, "peer 2 direct again")
