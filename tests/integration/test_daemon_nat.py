"""VXLAN across 1:1 NAT between clouds, with the hosts' checksum offload left on.

flannel's "63-second" bug: TCP over VXLAN stalled when the underlay was NATed and the
host had TX checksum offload on; overlayd turns TX checksum offload off on its VXLAN
device (as flannel's fix does). This proves TCP works in that setting and that the fix
is in place — whether this kernel would still corrupt checksums without it is not shown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.daemons import BIN, OverlaydProc, full_matrix, ns_run, running
from tests.lab.world import World, build_multicloud_world, destroy, tcp_transfer

pytestmark = pytest.mark.root
NBYTES = 50 * 1024 * 1024


@pytest.fixture(scope="module")
def world(
    prefix_factory: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    w = build_multicloud_world(prefix_factory(), workdir=tmp_path_factory.mktemp("nat"))
    try:
        a1 = w.host("a1").ns.name  # plain VXLAN across the NATs is what is under test
        ns_run(a1, str(BIN / "overlayctl"), "--etcd-endpoints", w.etcd_endpoint,
               "network", "init", "--network", "10.244.0.0/16", "--backend", "vxlan")  # fmt: skip
        yield w
    finally:
        destroy(w)


@pytest.fixture(scope="module")
def daemons(world: World) -> Iterator[dict[str, OverlaydProc]]:
    with running(world, ("a1", "a2", "b1", "bare")) as procs:
        yield procs


def test_cross_cloud_overlay_matrix(daemons: dict[str, OverlaydProc]) -> None:
    full_matrix(daemons)


def test_paths_by_site_private_inside_public_across(
    world: World, daemons: dict[str, OverlaydProc]
) -> None:
    fdb = ns_run(daemons["a1"].ns, "bridge", "fdb", "show", "dev", "overlay.1").stdout
    assert f"dst {world.host('a2').ip} " in fdb  # same site: private address
    assert f"dst {world.host('b1').public} " in fdb  # other cloud: its 1:1 NAT address
    assert f"dst {world.host('bare').ip} " in fdb


def test_tcp_over_vxlan_across_nat_with_checksum_offload_on(
    daemons: dict[str, OverlaydProc],
) -> None:
    a1, b1, bare = daemons["a1"], daemons["b1"], daemons["bare"]
    for d in (a1, b1):
        assert "tx-checksumming: on" in ns_run(d.ns, "ethtool", "-k", "eth0").stdout
        # the fix for flannel's "63-second" bug, on our device
        assert "tx-checksumming: off" in ns_run(d.ns, "ethtool", "-k", "overlay.1").stdout
    for src, dst in ((a1, b1), (b1, a1), (a1, bare), (bare, b1)):
        moved = tcp_transfer(src.host.ns, dst.host.ns, dst.overlay_ip(), NBYTES)
        assert moved.nbytes == NBYTES
        assert moved.seconds < 60, f"{src.node} -> {dst.node} took {moved.seconds:.1f}s"
