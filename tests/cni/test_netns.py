"""ADD/CHECK/DEL/GC with the real ``bridge`` and ``host-local`` plugins, in namespaces.

Each test creates its own ``ovcni-*`` namespaces: a "host" namespace where the plugin runs
(as a runtime would run it) and one namespace per container. Bridges, veths and iptables
rules live only in those namespaces, and the namespaces are deleted whatever happens.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

import pytest

from overlayd.cni.errors import Code
from overlayd.cni.install import build_zipapp
from overlayd.cni.spec import SUPPORTED_VERSIONS, version_key
from tests.cni.cnitest import (
    NETWORK,
    PLUGIN,
    SUBNET,
    Node,
    assert_cni_error,
    attach_env,
    ip,
    namespaces,
    run_plugin,
)

pytestmark = pytest.mark.root

GATEWAY = str(SUBNET.ip)


@pytest.fixture
def ns() -> Iterator[dict[str, str]]:
    with namespaces("host", "c1", "c2") as names:
        yield names


@pytest.fixture
def node(tmp_path: Path) -> Node:
    node = Node(tmp_path)
    node.write_subnet()
    return node


def _add(
    node: Node, ns: dict[str, str], ctr: str, version: str = "1.0.0", plugin: Path = PLUGIN
) -> dict[str, Any]:
    reply = run_plugin(
        "ADD", node.netconf(version), attach_env(ctr, ns[ctr]), netns=ns["host"], plugin=plugin
    )
    assert reply.exit_code == 0, reply
    result = reply.json
    assert isinstance(result, dict)
    return result


def _del(node: Node, ns: dict[str, str], ctr: str, version: str = "1.0.0") -> None:
    reply = run_plugin("DEL", node.netconf(version), attach_env(ctr, ns[ctr]), netns=ns["host"])
    assert (reply.exit_code, reply.stdout) == (0, ""), reply


def _ping(ns_name: str, address: str) -> bool:
    proc = subprocess.run(
        ["nsenter", f"--net=/run/netns/{ns_name}", "busybox", "ping", "-c1", "-W2", address],
        capture_output=True,
        check=False,
    )
    return proc.returncode == 0


def _veths(ns_name: str) -> str:
    return ip("-o", "link", "show", "type", "veth", netns=ns_name)


def _container_address(result: dict[str, Any]) -> IPv4Interface:
    (entry,) = result["ips"]
    return IPv4Interface(entry["address"])


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_add_check_del_round_trip(node: Node, ns: dict[str, str], version: str) -> None:
    result = _add(node, ns, "c1", version)

    assert result["cniVersion"] == version
    (entry,) = result["ips"]
    # 0.3.x/0.4.0 results carry ips[].version; 1.x results must not.
    assert ("version" in entry) == (version_key(version) < (1, 0, 0))
    address = _container_address(result)
    assert address.network == SUBNET.network and address.ip != SUBNET.ip
    assert {"dst": str(NETWORK), "gw": GATEWAY} in result["routes"]
    assert f"{NETWORK} via {GATEWAY} dev eth0" in ip("-4", "route", netns=ns["c1"])
    assert "mtu 1400" in ip("link", "show", "eth0", netns=ns["c1"])
    assert _ping(ns["c1"], GATEWAY)
    assert node.cache_entries() == ["c1@eth0"]
    assert node.leases() == [str(address.ip)]

    if version_key(version) >= (0, 4, 0):
        conf = node.netconf(version, prevResult=result)
        reply = run_plugin("CHECK", conf, attach_env("c1", ns["c1"]), netns=ns["host"])
        assert (reply.exit_code, reply.stdout) == (0, ""), reply

    _del(node, ns, "c1", version)
    assert _veths(ns["host"]) == ""
    assert node.leases() == []
    assert node.cache_entries() == []
    _del(node, ns, "c1", version)  # a second DEL is a no-op


def test_check_fails_when_the_container_lost_its_route(node: Node, ns: dict[str, str]) -> None:
    result = _add(node, ns, "c1")
    ip("route", "del", str(NETWORK), netns=ns["c1"])
    conf = node.netconf("1.0.0", prevResult=result)
    reply = run_plugin("CHECK", conf, attach_env("c1", ns["c1"]), netns=ns["host"])
    body = assert_cni_error(reply, None, "1.0.0")  # bridge's own code, passed on
    assert body["code"] != Code.STALE_ATTACHMENT
    assert "route" in (body["msg"] + body.get("details", "")).lower()


def test_check_fails_when_the_node_subnet_changed(node: Node, ns: dict[str, str]) -> None:
    result = _add(node, ns, "c1")
    node.write_subnet(IPv4Interface("10.244.9.1/24"))
    conf = node.netconf("1.0.0", prevResult=result)
    reply = run_plugin("CHECK", conf, attach_env("c1", ns["c1"]), netns=ns["host"])
    body = assert_cni_error(reply, Code.STALE_ATTACHMENT, "1.0.0")
    assert "ipam" in body["details"]
    _del(node, ns, "c1")  # DEL replays the cached config: the old lease goes
    assert node.leases() == []


def test_check_with_1_1_0_prev_result(node: Node, ns: dict[str, str]) -> None:
    """A 1.1.0 prevResult is converted for the 1.0.0-only delegate."""
    result = _add(node, ns, "c1", "1.1.0")
    conf = node.netconf("1.1.0", prevResult=result)
    reply = run_plugin("CHECK", conf, attach_env("c1", ns["c1"]), netns=ns["host"])
    assert (reply.exit_code, reply.stdout) == (0, ""), reply


def test_bridge_masquerades_only_when_overlayd_does_not(node: Node, ns: dict[str, str]) -> None:
    def nat_rules() -> str:
        return subprocess.run(
            ["nsenter", f"--net=/run/netns/{ns['host']}", "iptables", "-t", "nat", "-S"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    _add(node, ns, "c1")  # OVERLAY_IPMASQ=true: overlayd masquerades, the bridge must not
    assert "MASQUERADE" not in nat_rules()
    node.write_subnet(ipmasq=False)
    _add(node, ns, "c2")
    assert "MASQUERADE" in nat_rules()
    _del(node, ns, "c2")
    assert "MASQUERADE" not in nat_rules(), "DEL removes the bridge's masquerade chain"
    _del(node, ns, "c1")


def test_containers_on_one_node_reach_each_other(node: Node, ns: dict[str, str]) -> None:
    first = _container_address(_add(node, ns, "c1"))
    second = _container_address(_add(node, ns, "c2"))
    assert first != second
    assert _ping(ns["c1"], str(second.ip)) and _ping(ns["c2"], str(first.ip))
    _del(node, ns, "c1")
    _del(node, ns, "c2")
    assert _veths(ns["host"]) == "" and node.leases() == []


def test_failed_add_is_undone_by_del(node: Node, ns: dict[str, str]) -> None:
    """The entry is cached before bridge runs, so the runtime's DEL after a failed ADD
    finds it; bridge's own error reaches the runtime unchanged."""
    env = attach_env("c1", None)
    env["CNI_NETNS"] = "/run/netns/ovcni-does-not-exist"
    reply = run_plugin("ADD", node.netconf("1.0.0"), env, netns=ns["host"])
    body = assert_cni_error(reply, None, "1.0.0")
    assert "ovcni-does-not-exist" in body["msg"] + body.get("details", "")
    assert node.cache_entries() == ["c1@eth0"]
    reply = run_plugin("DEL", node.netconf("1.0.0"), env, netns=ns["host"])
    assert reply.exit_code == 0, reply
    assert node.cache_entries() == [] and node.leases() == []


def test_gc_releases_only_stale_attachments_of_its_network(node: Node, ns: dict[str, str]) -> None:
    other = Node(node.root)  # same cache and lease dirs, another network name
    kept = _container_address(_add(node, ns, "c1"))
    _add(node, ns, "c2")
    other_conf = other.netconf("1.0.0")
    other_conf["delegate"]["bridge"] = "cni-other"
    other_reply = run_plugin(
        "ADD", other_conf, attach_env("c2", ns["c2"], ifname="net1"), netns=ns["host"]
    )
    assert other_reply.exit_code == 0, other_reply

    conf = node.netconf(
        "1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]}
    )
    reply = run_plugin("GC", conf, {"CNI_PATH": "/usr/lib/cni"}, netns=ns["host"])
    assert (reply.exit_code, reply.stdout) == (0, ""), reply

    assert node.cache_entries() == ["c1@eth0"]
    assert node.leases() == [str(kept.ip)], "the stale attachment's address is released"
    assert other.cache_entries() == ["c2@net1"], "another network's entries are untouched"
    assert len(other.leases()) == 1


def test_status_succeeds_with_subnet_file(node: Node, ns: dict[str, str]) -> None:
    reply = run_plugin(
        "STATUS", node.netconf("1.1.0"), {"CNI_PATH": "/usr/lib/cni"}, netns=ns["host"]
    )
    assert (reply.exit_code, reply.stdout) == (0, ""), reply


def test_installed_zipapp_runs_add_and_del(node: Node, ns: dict[str, str], tmp_path: Path) -> None:
    """The file a node gets from ``overlayd.cni.install`` works on its own."""
    plugin = tmp_path / "bin" / "overlay"
    plugin.parent.mkdir()
    build_zipapp(plugin)
    assert plugin.read_bytes().startswith(b"#!/usr/bin/python3 -IS\n")
    version = run_plugin("VERSION", {"cniVersion": "1.1.0"}, plugin=plugin)
    assert version.json["supportedVersions"] == list(SUPPORTED_VERSIONS)
    result = _add(node, ns, "c1", "1.1.0", plugin=plugin)
    assert _container_address(result).network == SUBNET.network
    reply = run_plugin(
        "DEL", node.netconf("1.1.0"), attach_env("c1", ns["c1"]), netns=ns["host"], plugin=plugin
    )
    assert reply.exit_code == 0, reply
    assert node.cache_entries() == [] and node.leases() == []
