"""podman (CNI backend) attaches real containers through the installed ``overlay`` plugin."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd.cni.install import build_zipapp
from tests.cni.cnitest import SUBNET, SYSTEM_CNI_BIN, Node, ip, namespaces
from tests.cni.podman_harness import LIBCNI_RESULTS, PodmanHost, overlay_conflist

pytestmark = pytest.mark.root


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[PodmanHost, Node]]:
    """A host namespace with a subnet file, the installed plugin, podman and a network."""
    node = Node(tmp_path / "node")
    node.write_subnet()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    build_zipapp(bin_dir / "overlay")
    with (
        namespaces("pod") as ns,
        PodmanHost(ns["pod"], (bin_dir, SYSTEM_CNI_BIN)) as host,
    ):
        host.import_image()
        host.add_network(
            overlay_conflist(node.network_name, node.subnet_file, node.cache_dir, node.lease_dir)
        )
        yield host, node


def test_container_gets_node_subnet_and_leaves_nothing_behind(
    setup: tuple[PodmanHost, Node],
) -> None:
    host, node = setup
    container_id = host.run_container("ovcni-c1", node.network_name)

    address = host.address("ovcni-c1")
    assert address.network == SUBNET.network
    assert "0% packet loss" in host.exec("ovcni-c1", "ping", "-c1", "-W2", str(SUBNET.ip))
    assert node.cache_entries() == [f"{container_id}@eth0"]
    assert node.leases() == [str(address.ip)]

    host.remove_container("ovcni-c1")
    assert ip("-o", "link", "show", "type", "veth", netns=host.netns) == ""
    assert node.leases() == []
    assert node.cache_entries() == []
    assert not (LIBCNI_RESULTS / f"{node.network_name}-{container_id}-eth0").exists()


def test_two_containers_exchange_a_tcp_payload(setup: tuple[PodmanHost, Node]) -> None:
    host, node = setup
    host.run_container("ovcni-srv", node.network_name, "timeout", "30", "nc", "-l", "-p", "5000")
    server = host.address("ovcni-srv")
    # the server container may not listen yet when the client starts: retry the connect
    connect = (
        f"for i in $(seq 50); do echo overlay-payload | nc {server.ip} 5000 && exit 0; "
        "sleep 0.2; done; exit 1"
    )
    host.run_container("ovcni-cli", node.network_name, "sh", "-c", connect)
    assert host.wait("ovcni-srv") == 0
    assert host.logs("ovcni-srv").strip() == "overlay-payload"
    for name in ("ovcni-srv", "ovcni-cli"):
        host.remove_container(name)
    assert node.cache_entries() == [] and node.leases() == []
