"""Issue 11, relays: two masquerade-only clouds and one public host (the relay).

The world is ``build_multicloud_world(nat_a="masquerade", nat_b="masquerade-random")``:
a1, a2 behind cloud A's masquerade, b1 behind cloud B's masquerade with random ports (a
symmetric NAT, which defeats hole punching), and the bare host with a public address on
its interface, which relays by default. a1 and b1 cannot reach each other directly, so
after the grace time both route the pair through the bare host over WireGuard on both
legs:

* the full overlay matrix pings; ``overlayctl peers`` on a1 and b1 says ``via relay bare``,
  and the pair's packets cross the relay (an nftables counter in its forward hook);
* 50 MB go from a1 to b1 over TCP through the relay;
* on the internet, nothing of the overlay crosses in clear: a capture on the internet's
  bridge sees no packet with an overlay address and no VXLAN while the pair works;
* with port-preserving masquerade on both sides, the full matrix of a1, a2, b1 and bare
  pings, every cross-site pair punched or relayed (which pairs punch depends on which
  host's ports the NAT kept, docs/nat.md);
* the gateway topology with both clouds masquerade-only: the gateways go through the
  relay, and the whole matrix (members included) pings;
* with two relays (``more_public=1``): when the pair's relay stops forwarding (but still
  answers probes: only the data-plane check through it can tell), the pair moves to the
  other relay; when that host dies too, the pair reports no path and why.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from tests.daemons import (
    BIN,
    OverlaydProc,
    full_matrix,
    init_network,
    ns_run,
    running,
    wait_until,
)
from tests.lab.world import (
    NatMode,
    World,
    counter_packets,
    multicloud_world,
    ping,
    tcp_transfer,
)
from tests.topology import drop_forwarded, gateway_of, init_gateway_network, kill_host

pytestmark = pytest.mark.root
HOSTS = ("a1", "a2", "b1", "bare")
NETWORK = "10.244.0.0/16"
RELAY_TIMEOUT = 30.0  # seconds: probes, the grace time, the RTTs in both leases
COUNTERS = "ovrelay"


@pytest.fixture(
    params=[
        ("wireguard", "masquerade-random"),
        ("vxlan+wireguard", "masquerade-random"),
    ],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def world(
    request: pytest.FixtureRequest, prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    backend, nat_b = request.param
    nat: NatMode = nat_b
    with multicloud_world(
        prefix, nat_a="masquerade", nat_b=nat, workdir=tmp_path_factory.mktemp("relay")
    ) as w:
        init_network(w, backend, NETWORK)
        yield w


@pytest.fixture
def daemons(world: World) -> Iterator[dict[str, OverlaydProc]]:
    with running(world, HOSTS) as d:
        yield d


def _relay_of(src: OverlaydProc, dst: OverlaydProc) -> str | None:
    return src.peers().get(dst.node, {}).get("relay")


def _count_forwarded(world: World, a: OverlaydProc, b: OverlaydProc) -> None:
    """An nftables counter on the relay of packets from ``a``'s subnet to ``b``'s."""
    sa, sb = a.require_status()["subnet"], b.require_status()["subnet"]
    world.host("bare").ns.nft(
        f"table ip {COUNTERS} {{ counter pair {{ }}\n"
        f"  chain relayed {{ type filter hook forward priority 0; policy accept;\n"
        f"    ip saddr {sa} ip daddr {sb} counter name pair\n  }}\n}}\n"
    )


def _capture_internet(world: World, seconds: float) -> list[str]:
    """Packets a capture on the internet's bridge sees during ``seconds`` (bounded: at
    most 400) that are WireGuard, VXLAN or carry an overlay address, one line each."""
    cap = subprocess.run(
        [
            "ip", "netns", "exec", f"{world.prefix}inet", "timeout", str(seconds),
            "tcpdump", "-i", "br0", "-n", "-l", "-q", "-c", "400",
            f"udp port 51820 or udp port 8472 or net {NETWORK}",
        ],
        capture_output=True, text=True, timeout=seconds + 10, check=False,
    )  # fmt: skip
    return [line for line in cap.stdout.splitlines() if line.strip()]


def _state(daemons: dict[str, OverlaydProc]) -> str:
    """Each daemon's WireGuard device (keys hidden by wg) and the end of its log."""
    parts = []
    for name, d in daemons.items():
        links = ns_run(d.ns, "ip", "-o", "link", "show").stdout
        dev = next((p.split("@")[0].rstrip(":") for p in links.split() if p.startswith("ovwg")), "")
        wg = ns_run(d.ns, "wg", "show", dev, check=False).stdout if dev else "(no device)"
        routes = ns_run(d.ns, "ip", "route", "show", "dev", dev, check=False).stdout
        parts.append(f"--- {name}:\n{wg}{routes}{d.log()[-2500:]}")
    return "\n".join(parts)


@pytest.mark.parametrize("backend", ["wireguard", "vxlan+wireguard"])
def test_both_masquerade_full_matrix_punched_or_relayed(
    backend: str, prefix: str, tmp_path: Path
) -> None:
    with multicloud_world(
        prefix, nat_a="masquerade", nat_b="masquerade", workdir=tmp_path / "world"
    ) as world:
        init_network(world, backend, NETWORK)
        with running(world, HOSTS) as daemons:
            full_matrix(daemons, timeout=RELAY_TIMEOUT)
            for a in ("a1", "a2"):
                for src, dst in ((daemons[a], daemons["b1"]), (daemons["b1"], daemons[a])):
                    peer = src.peers()[dst.node]
                    how = (peer["kind"], peer.get("relay"))
                    # relayed: no probe path, or a punched one no WireGuard handshake crosses
                    relayed = (("none", "bare"), ("punched", "bare"))
                    assert how == ("punched", None) or how in relayed, (src.node, dst.node, how)


def test_nat_pair_goes_through_the_relay(world: World, daemons: dict[str, OverlaydProc]) -> None:
    a1, b1 = daemons["a1"], daemons["b1"]
    wait_until(lambda: _relay_of(a1, b1) == "bare", RELAY_TIMEOUT, "a1 -> b1 via relay bare")
    wait_until(lambda: _relay_of(b1, a1) == "bare", RELAY_TIMEOUT, "b1 -> a1 via relay bare")
    full_matrix(daemons)
    ctl = ns_run(a1.ns, str(BIN / "overlayctl"), "peers", "--daemon", "http://127.0.0.1:10256")
    assert "via relay bare" in ctl.stdout, ctl.stdout

    _count_forwarded(world, a1, b1)
    assert ping(a1.host.ns, b1.overlay_ip(), count=5).ok
    assert counter_packets(world.host("bare").ns, COUNTERS, "pair") >= 5

    pinger = a1.host.ns.popen(
        ["ping", "-n", "-q", "-c", "30", "-i", "0.1", str(b1.overlay_ip())],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    seen = _capture_internet(world, 3.0)
    pinger.wait(timeout=30)
    clear = [line for line in seen if "10.244." in line or ".8472" in line]
    assert not clear, "overlay traffic in clear on the internet:\n" + "\n".join(clear)
    assert any(".51820" in line for line in seen), "the capture saw no WireGuard at all"

    moved = tcp_transfer(a1.host.ns, b1.host.ns, b1.overlay_ip())
    assert moved.nbytes == 50 * 2**20


def test_a_punched_path_wireguard_cannot_cross_goes_through_the_relay(
    prefix: str, tmp_path: Path
) -> None:
    """Probes punch through both masquerades, but cloud B's router drops WireGuard between
    the two NATs (as a NAT that maps WireGuard's port per destination does, which no
    third node can see): the probe path verifies, no handshake crosses it, and after the
    handshake grace the pair goes through the relay and pings."""
    with multicloud_world(
        prefix, nat_a="masquerade", nat_b="masquerade", workdir=tmp_path / "world"
    ) as world:
        init_network(world, "wireguard", NETWORK)
        a_nat = world.router("cloud-a").outside.ip
        world.router("cloud-b").ns.nft(
            f"table ip ovnowg {{\n chain forward {{\n"
            f"  type filter hook forward priority 0; policy accept;\n"
            f"  ip saddr {a_nat} udp dport 51820 drop\n"
            f"  ip daddr {a_nat} udp sport 51820 drop\n }}\n}}\n"
        )
        with running(world, ("a1", "b1", "bare")) as daemons:
            a1, b1 = daemons["a1"], daemons["b1"]
            verified = lambda: bool(a1.peers().get("b1", {}).get("verified"))  # noqa: E731
            wait_until(verified, RELAY_TIMEOUT, "a1's probes verify a direct path to b1")
            wait_until(lambda: _relay_of(a1, b1) == "bare", RELAY_TIMEOUT, "a1 -> b1 relayed")
            wait_until(lambda: _relay_of(b1, a1) == "bare", RELAY_TIMEOUT, "b1 -> a1 relayed")
            full_matrix(daemons, timeout=RELAY_TIMEOUT)
            assert "no WireGuard handshake with" in a1.log(), a1.log()[-3000:]


@pytest.fixture
def two_relays(prefix: str, tmp_path: Path) -> Iterator[dict[str, OverlaydProc]]:
    """The random-port world with a second public host (``bare2``): two relays."""
    with multicloud_world(
        prefix, nat_a="masquerade", nat_b="masquerade-random", more_public=1, workdir=tmp_path
    ) as w:
        init_network(w, "wireguard", NETWORK)
        with running(w, ("a1", "b1", "bare", "bare2")) as d:
            yield d


def test_dead_relay_moves_the_pair_to_the_other_then_leaves_it_with_no_path(
    two_relays: dict[str, OverlaydProc],
) -> None:
    a1, b1 = two_relays["a1"], two_relays["b1"]
    wait_until(lambda: _relay_of(a1, b1) in ("bare", "bare2"), RELAY_TIMEOUT, "a1 relayed")
    first = _relay_of(a1, b1)
    assert first is not None
    wait_until(lambda: _relay_of(b1, a1) == first, RELAY_TIMEOUT, f"b1 via relay {first}")
    wait_until(partial(a1.pings, b1), 15, "a1 -> b1 through the first relay")
    other = "bare2" if first == "bare" else "bare"

    drop_forwarded(two_relays, first)  # it answers probes, but forwards nothing
    wait_until(lambda: _relay_of(a1, b1) == other, 20, f"a1 -> b1 moves to relay {other}")
    wait_until(lambda: _relay_of(b1, a1) == other, 20, f"b1 -> a1 moves to relay {other}")
    try:
        wait_until(partial(a1.pings, b1), 15, f"a1 -> b1 through relay {other}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_state(two_relays)}") from None

    assert f"relay {first} stopped forwarding" in a1.log()
    kill_host(two_relays, other)

    def no_path() -> bool:
        peer = a1.peers().get("b1", {})
        return peer.get("kind") == "none" and "relay" in (peer.get("reason") or "")

    wait_until(no_path, 20, "a1 reports b1 with no path, and why")


def test_gateway_topology_with_both_sites_masquerade_only_goes_through_the_relay(
    prefix: str, tmp_path: Path
) -> None:
    """Sites a and b (gateway mode) each behind masquerade, b's with random ports: their
    gateways cannot reach each other, so the bare host (its own site's gateway, and a
    relay) carries the pair; members reach the other site through both gateways."""
    with multicloud_world(
        prefix, nat_a="masquerade", nat_b="masquerade-random", workdir=tmp_path
    ) as w:
        init_gateway_network(w)
        with running(w, ("a1", "a2", "b1", "b2", "bare")) as d:
            wait_until(
                lambda: None not in (gateway_of(w, "cloud-a"), gateway_of(w, "cloud-b")),
                15, "both clouds' gateways",
            )  # fmt: skip
            ga, gb = d[gateway_of(w, "cloud-a") or ""], d[gateway_of(w, "cloud-b") or ""]
            wait_until(lambda: _relay_of(ga, gb) == "bare", RELAY_TIMEOUT, "gateways relayed")
            full_matrix(d, timeout=30)
            seen = _capture_internet(w, 3.0)
            clear = [line for line in seen if "10.244." in line or ".8472" in line]
            assert not clear, "overlay traffic in clear on the internet:\n" + "\n".join(clear)
