"""Issue 9: forged VXLAN must not get into the overlay (the ingress filter, docs/backends.md).

In the multi-cloud world with real daemons on a1, a2 (cloud A) and b1 (cloud B), hand-made
VXLAN datagrams (VNI 1, inner destination MAC = a2's overlay device MAC) are sent to a2:
from the internet namespace to a2's public address, or from a1 to a2's private address.
Each carries a UDP datagram to a listener on a2's overlay address and an ICMP echo. A case
says where the outer datagram claims to come from, whose VTEP MAC the inner frame carries
and in whose subnet its inner source lies, and whether a2 must take it, per backend:

* outer source not a peer: dropped (both backends);
* outer source spoofed as b1's public address: with ``vxlan+wireguard`` dropped (b1 is a
  WireGuard peer, nothing of another site is accepted as plain VXLAN); with ``vxlan``
  taken if the inner frame is b1's (the documented limit: address filtering cannot stop
  spoofing), dropped if its inner source is not in b1's subnet;
* outer source spoofed as a1's public address (a2's same-site peer, reached over its
  private address): dropped (both backends: a same-site peer's public address is accepted
  only while a2 itself reaches it over that address);
* from a1 itself, its own MAC and subnet: taken (the positive control); a1 carrying a
  source of b1's subnet: dropped.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

import pytest

from tests.daemons import BIN, OverlaydProc, full_matrix, ns_run, running
from tests.lab.netns import Namespace, tool
from tests.lab.world import World, build_multicloud_world, destroy

pytestmark = pytest.mark.root
HOSTS = ("a1", "a2", "b1")
LISTEN_PORT = 7777
SPOOFED_NON_PEER = IPv4Address("192.0.2.99")  # an internet address no lease mentions


@dataclass(frozen=True)
class Node:
    """What a test needs of one running host: namespace, VTEP MAC, subnet."""

    ns: Namespace
    mac: str
    subnet: IPv4Network

    def inner_source(self) -> IPv4Address:
        return self.subnet.network_address + 7


@dataclass(frozen=True)
class Case:
    name: str
    sender: str  # "inet" (to a2's public address) or a host name (to a2's private one)
    outer: str  # "non-peer" | "b1-public" | "a1-public" | "own" (the sender's real address)
    claims: str  # whose VTEP MAC the inner frame carries
    inner_from: str  # in whose subnet the inner source lies
    delivered: dict[str, bool]  # per backend


CASES = [
    Case("non-peer", "inet", "non-peer", "a1", "a1", {"vxlan": False, "vxlan+wireguard": False}),
    Case("spoofed-b1", "inet", "b1-public", "b1", "b1", {"vxlan": True, "vxlan+wireguard": False}),
    Case(
        "spoofed-b1-wrong-inner", "inet", "b1-public", "b1", "a1",
        {"vxlan": False, "vxlan+wireguard": False},
    ),
    Case(
        "spoofed-a1-public", "inet", "a1-public", "a1", "a1",
        {"vxlan": False, "vxlan+wireguard": False},
    ),
    Case("same-site-peer", "a1", "own", "a1", "a1", {"vxlan": True, "vxlan+wireguard": True}),
    Case(
        "same-site-peer-foreign-inner", "a1", "own", "a1", "b1",
        {"vxlan": False, "vxlan+wireguard": False},
    ),
]  # fmt: skip


@dataclass(frozen=True)
class Setup:
    backend: str
    world: World
    daemons: dict[str, OverlaydProc]
    nodes: dict[str, Node]


def _node(d: OverlaydProc) -> Node:
    link = json.loads(ns_run(d.ns, "ip", "-j", "link", "show", "overlay.1").stdout)[0]
    return Node(d.host.ns, str(link["address"]), IPv4Network(f"{d.overlay_ip()}/24"))


@pytest.fixture(scope="module", params=["vxlan", "vxlan+wireguard"])
def setup(
    request: pytest.FixtureRequest,
    prefix_factory: Callable[[], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Setup]:
    backend: str = request.param
    world = build_multicloud_world(prefix_factory(), workdir=tmp_path_factory.mktemp("inj"))
    try:
        ns_run(world.host("a1").ns.name, str(BIN / "overlayctl"), "--etcd-endpoints",
               world.etcd_endpoint, "network", "init", "--network", "10.244.0.0/16",
               "--backend", backend)  # fmt: skip
        with running(world, HOSTS) as daemons:
            full_matrix(daemons)
            nodes = {name: _node(d) for name, d in daemons.items()}
            yield Setup(backend, world, daemons, nodes)
    finally:
        destroy(world)


def _echoes(ns: Namespace) -> int:
    """ICMP echo requests ``ns`` has received (``Icmp: InEchos`` of /proc/net/snmp)."""
    rows = [line.split() for line in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()]
    head, values = [r for r in rows if r[0] == "Icmp:"][:2]
    return int(values[head.index("InEchos")])


def _send(s: Setup, case: Case, tag: str) -> None:
    target, world = s.nodes["a2"], s.world
    if case.sender == "inet":
        ns = Namespace(f"{world.prefix}inet")
        dst = world.host("a2").public
    else:
        ns = s.nodes[case.sender].ns
        dst = world.host("a2").ip
    src: IPv4Address | None
    if case.outer in ("b1-public", "a1-public"):
        src = world.host(case.outer.removesuffix("-public")).public
    elif case.outer == "own":
        src = world.host(case.sender).ip
    else:
        src = SPOOFED_NON_PEER
    claims, inner_from = s.nodes[case.claims], s.nodes[case.inner_from]
    assert src is not None and dst is not None
    ns.run(tool("vxlan_forge", str(src), str(dst), claims.mac, target.mac,
                str(inner_from.inner_source()), str(target.subnet.network_address),
                str(LISTEN_PORT), tag))  # fmt: skip


def _delivered(s: Setup, case: Case) -> tuple[bool, bool]:
    """Send ``case``'s frames; whether a2's listener got the UDP one, and a2 the echo."""
    target = s.nodes["a2"]
    tag = f"forged-{case.name}"
    before = _echoes(target.ns)
    listener = target.ns.popen(
        tool("traffic", "udp-print", str(target.subnet.network_address), str(LISTEN_PORT)),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        _send(s, case, tag)  # returns once every frame is sent
        time.sleep(1.0)  # delivery is local to the world: well within a second
        listener.terminate()  # the listener prints (and flushes) each datagram it gets
        out, _ = listener.communicate(timeout=15)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    return tag in out.split(), _echoes(target.ns) > before


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_forged_vxlan(setup: Setup, case: Case) -> None:
    want = case.delivered[setup.backend]
    got_udp, got_echo = _delivered(setup, case)
    verb = "delivered" if want else "dropped"
    assert (got_udp, got_echo) == (want, want), (
        f"{setup.backend}: {case.name} must be {verb}; UDP delivered: {got_udp}, "
        f"ICMP echo received: {got_echo}"
    )


def test_matrix_still_full_and_filter_in_place(setup: Setup) -> None:
    """After the forgeries, every host still reaches every other; a2's table is ours."""
    full_matrix(setup.daemons)
    table = setup.nodes["a2"].ns.run(["nft", "list", "table", "inet", "overlayd_ingress"]).stdout
    a1 = setup.world.host("a1")
    assert str(a1.ip) in table and f"{setup.nodes['a1'].mac} . {setup.nodes['a1'].subnet}" in table
    b1_public = str(setup.world.host("b1").public)
    assert (b1_public in table) == (setup.backend == "vxlan")
