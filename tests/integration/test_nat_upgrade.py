"""Issue 11: a relayed pair upgrades by itself when its NAT becomes punchable.

Cloud A masquerades with random ports (a symmetric NAT: no punch gets through), cloud B
with port-preserving masquerade, the public host ``bare`` relays. a1 and b1 start out
``via relay bare``. Then cloud A's router is switched to port-preserving masquerade (its
mappings forgotten, as a replaced NAT gateway's would be): with no flag and no restart,
the pair's next punch attempt gets through, both ends move to the punched path and leave
the relay, and the overlay keeps pinging.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from tests.daemons import OverlaydProc, init_network, running, wait_until
from tests.lab.world import World, build_multicloud_world, destroy, remasquerade

pytestmark = pytest.mark.root
HOSTS = ("a1", "b1", "bare")
RELAYED = 30.0
"""Seconds until both ends are relayed: endpoints published, a punch attempt given up."""
UPGRADE = 120.0
"""Seconds until both ends are punched after the NAT change: the next attempt on the
punch schedule's 60 s grid, its 5 s, and the hysteresis of the move off the relay."""


@pytest.fixture
def world(prefix: str, tmp_path: Path) -> Iterator[World]:
    w = build_multicloud_world(
        prefix, nat_a="masquerade-random", nat_b="masquerade", workdir=tmp_path / "world"
    )
    try:
        init_network(w, "wireguard")
        yield w
    finally:
        destroy(w)


def _peer(src: OverlaydProc, dst: str) -> dict[str, object]:
    return src.peers().get(dst) or {}


def _relayed(src: OverlaydProc, dst: str) -> bool:
    return _peer(src, dst).get("relay") == "bare"


def _punched(src: OverlaydProc, dst: str) -> bool:
    peer = _peer(src, dst)
    return peer.get("kind") == "punched" and peer.get("relay") is None


def test_relayed_pair_upgrades_to_punched_when_the_nat_allows(world: World) -> None:
    with running(world, HOSTS, public_ip=False) as procs:
        a1, b1 = procs["a1"], procs["b1"]
        for src, dst in ((a1, "b1"), (b1, "a1")):
            wait_until(partial(_relayed, src, dst), RELAYED, f"{src.node} -> {dst} relayed")
        wait_until(partial(a1.pings, b1), RELAYED, "a1 -> b1 via the relay")

        remasquerade(world, "cloud-a", random_ports=False)
        for src, dst in ((a1, "b1"), (b1, "a1")):
            wait_until(partial(_punched, src, dst), UPGRADE, f"{src.node} -> {dst} punched")
        wait_until(partial(a1.pings, b1), 10, "a1 -> b1 punched")
        wait_until(partial(b1.pings, a1), 10, "b1 -> a1 punched")
