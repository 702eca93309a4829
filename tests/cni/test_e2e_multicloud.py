"""End to end: podman containers in two clouds, attached through the ``overlay`` plugin.

The multi-cloud test world; overlayd (``--ip-masq``) on ``a1`` (cloud A) and ``b1``
(cloud B), whose underlay paths cross both clouds' 1:1 NAT. On each of the two hosts podman
(CNI backend, ``tests/cni/podman_harness.py``) runs one busybox container on a network
whose only attachment plugin is the installed ``overlay`` zipapp (``portmap`` chained), with
``subnetFile`` pointing at that host's daemon's subnet file. The test proves:

* each container's address is in its node's subnet (from the subnet file), not the gateway;
* the containers ping each other across the clouds, and the packets arrive on the peer host
  through its VXLAN device with the sending container's own address (no masquerade inside
  the overlay);
* 1 MiB of random data goes over TCP each way, byte count and MD5 checked;
* removing the containers leaves on either host no veth, no host-local lease file, no
  plugin cache entry, no libcni result and no container network namespace.

Forwarding: the world's hosts do not forward (only routers do), and overlayd does not turn
forwarding on; the ``bridge`` plugin (``isGateway``) enables ``net.ipv4.ip_forward`` in the
host's namespace on ADD. The test asserts that, rather than setting it itself.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from overlayd.cni.install import build_zipapp
from overlayd.disk.subnet_file import SubnetFile, read_subnet_file
from tests.cni.cnitest import SYSTEM_CNI_BIN
from tests.cni.podman_harness import LIBCNI_RESULTS, PodmanHost, overlay_conflist
from tests.daemons import BIN, OverlaydProc, ns_run, wait_until
from tests.lab.world import World, build_multicloud_world, destroy

pytestmark = pytest.mark.root

NETWORK = IPv4Network("10.244.0.0/16")
HOSTS = ("a1", "b1")
BRIDGE = "cni-overlay"  # the plugin's default bridge
VXLAN = "overlay.1"
PORT = 5000
NBYTES = 1 << 20
COUNTER_TABLE = "ovcni_e2e"
# Receives one TCP connection into /tmp/recv (``-e``: the server never half-closes first,
# so the sender's nc sends everything), then keeps the container alive.
SERVER = f"nc -l -p {PORT} -e sh -c 'cat > /tmp/recv'; sleep 3600"


@dataclass
class Node:
    """One host of the test: its overlayd, its podman and the plugin's files there."""

    name: str
    daemon: OverlaydProc
    podman: PodmanHost
    files: Path
    network: str

    @property
    def ns(self) -> str:
        return self.daemon.ns

    @property
    def container(self) -> str:
        return f"ovcni-e2e-{self.name}"

    @property
    def cache_dir(self) -> Path:
        return self.files / "cache"

    @property
    def lease_dir(self) -> Path:
        return self.files / "leases"

    def subnet(self) -> SubnetFile:
        return read_subnet_file(self.daemon.subnet_file)

    def cache_entries(self) -> list[str]:
        directory = self.cache_dir / self.network
        return sorted(os.listdir(directory)) if directory.exists() else []

    def leases(self) -> list[str]:
        """host-local's reservation files (named after the address)."""
        directory = self.lease_dir / self.network
        if not directory.exists():
            return []
        return sorted(n for n in os.listdir(directory) if n[0].isdigit())

    def veths(self) -> set[str]:
        out = ns_run(self.ns, "ip", "-o", "link", "show", "type", "veth").stdout
        return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}

    def sysctl(self, key: str) -> str:
        return ns_run(self.ns, "sysctl", "-n", key).stdout.strip()

    def start_container(self) -> str:
        """Start this host's container (the TCP server, kept alive); its ID."""
        return self.podman.run_container(self.container, self.network, "sh", "-c", SERVER)

    def sandbox(self) -> str:
        """Path of the container's network namespace (made by podman)."""
        argv = ("inspect", "--format", "{{.NetworkSettings.SandboxKey}}", self.container)
        return self.podman.podman(*argv).stdout.decode().strip()

    def exec(self, *command: str, check: bool = True) -> str:
        return self.podman.exec(self.container, *command, check=check)

    def count_from(self, peer: IPv4Address, local: IPv4Address) -> None:
        """Count packets from ``peer`` to ``local`` forwarded from the VXLAN device onto
        the bridge (nftables table of the test, in this host's namespace)."""
        ruleset = (
            f"table ip {COUNTER_TABLE} {{\n"
            "  counter from_peer {}\n"
            "  chain forward { type filter hook forward priority 0; policy accept;\n"
            f'    iifname "{VXLAN}" oifname "{BRIDGE}" ip saddr {peer} ip daddr {local}'
            ' counter name "from_peer"\n'
            "  }\n"
            "}\n"
        )
        self.daemon.host.ns.nft(ruleset)

    def counted(self) -> int:
        out = ns_run(self.ns, "nft", "-j", "list", "counter", "ip", COUNTER_TABLE, "from_peer")
        for item in json.loads(out.stdout)["nftables"]:
            if "counter" in item:
                packets: int = item["counter"]["packets"]
                return packets
        raise AssertionError(f"no counter in {self.ns}")


def podman_nodes(
    stack: ExitStack, world: World, tmp_path: Path, *, names: bool = False
) -> dict[str, Node]:
    """overlayd (``--ip-masq``) on a1 and b1 of ``world`` and podman with an overlay network
    on both, torn down by ``stack``; ``names``: the plugin registers container names with
    the daemons (docs/dns.md)."""
    # plain VXLAN: the test counts the peer's packets arriving on the VXLAN device
    init = ns_run(world.host("a1").ns.name, str(BIN / "overlayctl"),
                  "--etcd-endpoints", world.etcd_endpoint,
                  "network", "init", "--network", str(NETWORK), "--backend", "vxlan",
                  check=False)  # fmt: skip
    assert init.returncode == 0, f"overlayctl network init: {init.stdout}{init.stderr}"
    daemons = {n: OverlaydProc(world, world.host(n), extra=("--ip-masq",)) for n in HOSTS}
    for daemon in daemons.values():
        stack.callback(daemon.kill9)
        daemon.start()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    build_zipapp(bin_dir / "overlay")
    network = f"ovcni-e2e-{secrets.token_hex(3)}"
    result: dict[str, Node] = {}
    for name, daemon in daemons.items():
        podman = stack.enter_context(PodmanHost(daemon.ns, (bin_dir, SYSTEM_CNI_BIN)))
        result[name] = Node(name, daemon, podman, tmp_path / name, network)
    with ThreadPoolExecutor(len(result)) as pool:  # the imports take a second each
        list(pool.map(lambda node: node.podman.import_image(), result.values()))
    for node in result.values():
        node.daemon.wait_ready()
        sock = node.daemon.names_socket if names else None
        node.podman.add_network(
            overlay_conflist(network, node.daemon.subnet_file, node.cache_dir, node.lease_dir, sock)
        )
    return result


@pytest.fixture
def nodes(prefix_factory: Callable[[], str], tmp_path: Path) -> Iterator[dict[str, Node]]:
    """The world, overlayd on a1 and b1, podman with the overlay network on both.

    Torn down in reverse order even on failure: containers (CNI DEL) and podman's state,
    then the daemons, then the world's namespaces, etcd and helpers.
    """
    with ExitStack() as stack:
        world: World = build_multicloud_world(prefix_factory(), workdir=tmp_path / "world")
        stack.callback(destroy, world)
        yield podman_nodes(stack, world, tmp_path)


def container_pings(src: Node, dst: IPv4Address, count: int = 1) -> bool:
    out = src.exec("ping", "-c", str(count), "-W", "1", str(dst), check=False)
    return f"{count} packets received" in out


def send(src: Node, dst: IPv4Address) -> str:
    """Send NBYTES of fresh random data over TCP from ``src``'s container to the server in
    the container at ``dst`` (retrying the connect until it listens); the data's MD5."""
    script = (
        f"dd if=/dev/urandom of=/tmp/send bs=4096 count={NBYTES // 4096} 2>/dev/null || exit 2\n"
        "for i in $(seq 50); do\n"
        f"  timeout 30 nc {dst} {PORT} < /tmp/send && exec md5sum /tmp/send\n"
        "  sleep 0.2\n"
        "done\n"
        "exit 1\n"
    )
    return src.exec("sh", "-c", script).split()[0]


def received(node: Node) -> tuple[int, str]:
    """Byte count and MD5 of what the server in ``node``'s container received."""
    size = int(node.exec("wc", "-c", "/tmp/recv").split()[0])
    return size, node.exec("md5sum", "/tmp/recv").split()[0]


def test_containers_in_two_clouds_reach_each_other_and_leave_nothing_behind(
    nodes: dict[str, Node],
) -> None:
    a, b = nodes["a1"], nodes["b1"]
    subnets = {node.name: node.subnet() for node in (a, b)}
    for sf in subnets.values():
        assert sf.network == NETWORK
        assert sf.ipmasq  # overlayd masquerades (leaving the overlay only): bridge does not
    assert subnets["a1"].subnet.network != subnets["b1"].subnet.network
    veths_before = {node.name: node.veths() for node in (a, b)}

    ids: dict[str, str] = {}
    netns: dict[str, str] = {}
    addresses: dict[str, IPv4Interface] = {}
    for node in (a, b):
        ids[node.name] = node.podman.run_container(node.container, node.network, "sh", "-c", SERVER)
        netns[node.name] = (
            node.podman.podman(
                "inspect", "--format", "{{.NetworkSettings.SandboxKey}}", node.container
            )
            .stdout.decode()
            .strip()
        )
        address = node.podman.address(node.container)
        addresses[node.name] = address
        subnet = subnets[node.name].subnet
        assert address.network == subnet.network, (node.name, address, subnet)
        assert address.ip != subnet.ip  # the bridge's (gateway) address
        assert node.leases() == [str(address.ip)]
        assert node.cache_entries() == [f"{ids[node.name]}@eth0"]
        assert node.sysctl("net.ipv4.ip_forward") == "1"  # set by bridge (isGateway)
        assert Path(netns[node.name]).exists()
    a_ip, b_ip = addresses["a1"].ip, addresses["b1"].ip
    a.count_from(b_ip, a_ip)
    b.count_from(a_ip, b_ip)

    # Across the clouds: the first ping may go out before the peer's lease is programmed.
    wait_until(lambda: container_pings(a, b_ip), 20, f"a1 container -> {b_ip}")
    assert container_pings(a, b_ip, 3)
    assert container_pings(b, a_ip, 3)
    assert a.counted() >= 3 and b.counted() >= 3  # via overlay.1, sources not rewritten

    for src, dst in ((a, b), (b, a)):
        digest = send(src, addresses[dst.name].ip)
        assert received(dst) == (NBYTES, digest), f"{src.name} -> {dst.name}"

    for node in (a, b):
        node.podman.remove_container(node.container)
    for node in (a, b):
        assert node.veths() == veths_before[node.name]
        assert ns_run(node.ns, "ip", "-o", "link", "show", "master", BRIDGE).stdout == ""
        assert node.leases() == []
        assert node.cache_entries() == []
        assert not (LIBCNI_RESULTS / f"{node.network}-{ids[node.name]}-eth0").exists()
        assert not Path(netns[node.name]).exists()
        assert node.podman.podman("ps", "-aq").stdout.strip() == b""
