"""Issue 11: hole punching between hosts behind NAT (docs/nat.md, "Hole punching").

Worlds are ``build_multicloud_world`` with cloud A and cloud B behind NAT; no daemon is
given ``--public-ip`` unless said. Daemons run on a1, b1 and (where the world has it) the
public host ``bare``: a2, a3 and b2 behind the same masquerade would map their ports 8473
and 51820 to other ports towards b1 (the NAT's port 8473 towards b1's is a1's), which a
punch cannot predict -- those pairs are relayed (tests/integration/test_relay.py).

* ``masquerade`` on both sides, backends ``wireguard`` and ``vxlan+wireguard``: a1, b1 and
  bare ping each other; a1 and b1 reach each other over a punched path, both ways, and
  none of their overlay packets passes through bare (counted there); on the internet
  the pair's traffic is WireGuard only (a capture on the internet's bridge).
* one masquerade (cloud A) and one 1:1 NAT (cloud B, its elastic IP from its metadata
  API), no public host: a1 and b1 punch to each other (neither has a public address of
  its own, so each side's packets cross two NATs) and ping.
* ``masquerade-random`` in cloud A (a symmetric NAT): a1 and b1 give up punching within
  ``GIVE_UP`` seconds and say why, the pair goes via the relay bare and pings; bare
  still reaches both.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from tests.daemons import OverlaydProc, full_matrix, running, wait_until
from tests.integration.conftest import WorldMaker
from tests.integration.test_wireguard_backend import (
    ETCD_PORT,
    MARKER,
    PROBE_PORT,
    WG_PORT,
    Capture,
    internet,
    marked_pings,
)
from tests.lab.world import World, counter_packets

pytestmark = pytest.mark.root
BACKENDS = ("wireguard", "vxlan+wireguard")
HOSTS = ("a1", "b1", "bare")
MATRIX_TIMEOUT = 30.0
"""Seconds the first ping of a pair may take: discovery, endpoints, one punch attempt."""
GIVE_UP = 15.0
"""Seconds by which both sides of an unpunchable pair must have given up (an attempt is
1 s of opening and 4 s of probing; the endpoints take a few seconds to be published)."""
COUNTERS = "ovpunch"


@pytest.fixture(scope="module", params=BACKENDS)
def masq(
    request: pytest.FixtureRequest, make_world: WorldMaker
) -> Iterator[tuple[World, dict[str, OverlaydProc]]]:
    for world in make_world(
        request.param, nat_a="masquerade", nat_b="masquerade", public_host=True
    ):
        with running(world, HOSTS, public_ip=False) as procs:
            yield world, procs


def relayed_by_bare(bare: OverlaydProc, a: OverlaydProc, b: OverlaydProc) -> Callable[[], int]:
    """Count, in bare's namespace, every packet between ``a``'s and ``b``'s overlay
    addresses that reaches bare (decrypted from WireGuard or not): what a relay would
    carry for the pair."""
    x, y = a.overlay_ip(), b.overlay_ip()
    bare.host.ns.nft(
        f"""
        table ip {COUNTERS} {{
          counter relayed {{ }}
          chain pre {{
            type filter hook prerouting priority raw;
            ip saddr {x} ip daddr {y} counter name relayed
            ip saddr {y} ip daddr {x} counter name relayed
          }}
        }}
        """
    )
    return partial(counter_packets, bare.host.ns, COUNTERS, "relayed")


def kind(src: OverlaydProc, dst: str) -> str | None:
    """The kind of ``src``'s path to ``dst`` (``overlayctl peers``), None: not listed."""
    peer = src.peers().get(dst)
    return None if peer is None else str(peer["kind"])


def test_both_masquerade_punched_and_not_through_the_public_host(
    masq: tuple[World, dict[str, OverlaydProc]], tmp_path: Path
) -> None:
    world, procs = masq
    a1, b1, bare = procs["a1"], procs["b1"], procs["bare"]
    full_matrix(procs, timeout=MATRIX_TIMEOUT)
    for src, dst in (("a1", "b1"), ("b1", "a1")):
        wait_until(partial(_is, procs[src], dst, "punched"), 10, f"{src} -> {dst} is punched")
    relayed = relayed_by_bare(bare, a1, b1)
    cap = Capture(internet(world), "br0", tmp_path / "inet.pcap")
    try:
        assert marked_pings(a1, b1) == 3
        assert marked_pings(b1, a1) == 3
        time.sleep(1.5)  # tcpdump gets packets in blocks, up to a second late
    finally:
        cap.stop()
    assert relayed() == 0, "a1 <-> b1 overlay packets reached the public host"
    routers = " or ".join(f"host {r.outside.ip}" for r in world.routers)
    pair = cap.read(f"({routers}) and not host {bare.host.ip}")
    wireguard = cap.read(f"udp port {WG_PORT} and ({routers}) and not host {bare.host.ip}")
    # allowed besides WireGuard: probes, etcd, ARP, IPv6 link-local chatter, and the
    # ICMP errors for probes and for the openers that expired on the way (time exceeded)
    errors = "(icmp[0] == 3 or icmp[0] == 11)"
    other = cap.read(
        f"not (udp port {WG_PORT} or udp port {PROBE_PORT} or tcp port {ETCD_PORT} or arp "
        f"or ip6 or {errors})"
    )
    print(f"a1 <-> b1: {len(wireguard)} WireGuard packets of {len(pair)} between the routers")
    assert len(wireguard) >= 2 * 2 * 3, pair[:20]
    assert other == [], other[:5]
    assert MARKER not in cap.raw(), "ping payload seen in clear on the internet"


def test_masquerade_and_one_to_one_punch(make_world: WorldMaker) -> None:
    # b1 learns its elastic IP from cloud B's metadata; a1 learns nothing by itself
    for world in make_world(
        "wireguard",
        nat_a="masquerade",
        nat_b="one-to-one",
        public_host=False,
        metadata={"cloud-b": "gcp"},
    ):
        with running(world, ("a1", "b1"), public_ip=False) as procs:
            full_matrix(procs, timeout=MATRIX_TIMEOUT)
            for src, dst in (("a1", "b1"), ("b1", "a1")):
                wait_until(partial(_is, procs[src], dst, "punched"), 10, f"{src} -> {dst} punched")


def test_random_port_masquerade_gives_up_with_a_reason(make_world: WorldMaker) -> None:
    for world in make_world(
        "wireguard", nat_a="masquerade-random", nat_b="masquerade", public_host=True
    ):
        with running(world, HOSTS, public_ip=False) as procs:
            a1, b1, bare = procs["a1"], procs["b1"], procs["bare"]
            t0 = time.monotonic()
            for src, dst in ((a1, "b1"), (b1, "a1")):
                wait_until(partial(_gave_up, src, dst), GIVE_UP, f"{src.node} gives up on {dst}")
            took = time.monotonic() - t0
            print(f"both gave up {took:.1f} s after the daemons were ready")
            assert kind(a1, "b1") == "none" and kind(b1, "a1") == "none"
            # the relay takes the pair (tests/integration/test_relay.py has the rest)
            for src, dst in ((a1, "b1"), (b1, "a1")):
                wait_until(partial(_relayed, src, dst), GIVE_UP, f"{src.node} -> {dst} relayed")
            print(f"both relayed via bare {time.monotonic() - t0:.1f} s after ready")
            wait_until(partial(a1.pings, b1), GIVE_UP, "a1 -> b1 via the relay")
            for d in (a1, b1):
                wait_until(partial(bare.pings, d), MATRIX_TIMEOUT, f"bare -> {d.node}")
                wait_until(partial(d.pings, bare), MATRIX_TIMEOUT, f"{d.node} -> bare")


def _is(src: OverlaydProc, dst: str, expected: str) -> bool:
    return kind(src, dst) == expected


def _relayed(src: OverlaydProc, dst: str) -> bool:
    peer = src.peers().get(dst)
    return peer is not None and peer.get("relay") == "bare"


def _gave_up(src: OverlaydProc, dst: str) -> bool:
    peer = src.peers().get(dst)
    return peer is not None and peer["kind"] == "none" and "gave up" in str(peer["reason"])
