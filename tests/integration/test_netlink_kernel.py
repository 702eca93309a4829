"""The netlink adapter against the real kernel, inside throwaway network namespaces.

The test process stays in the root namespace; the code under test runs in a child
``ip netns exec <ns> python -m tests.lab.tools.netlink_child`` process and reports back as
JSON. Results are checked with iproute2/ethtool's own view of the kernel, not only with our
own dump.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
from collections.abc import Iterator
from itertools import count
from typing import Any

import pytest

from tests.lab.netns import tool

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

_ids = count()


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def run_child(ns: str, *args: str) -> Any:
    """Run ``tests.lab.tools.netlink_child ARGS`` in namespace ``ns``; its last JSON line."""
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, *tool("netlink_child", *args)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def state_json(ids: range, underlay: str = "192.0.2") -> dict[str, list[str]]:
    """The same desired state as the child's ``desired`` in JSON form, built here."""
    routes, neighs, fdbs = [], [], []
    for i in ids:
        net = f"10.{100 + i // 250}.{i % 250}.0"
        mac = f"02:aa:00:00:{i // 256:02x}:{i % 256:02x}"
        routes.append(f"{net}/24 via {net}")
        neighs.append(f"{net} {mac}")
        fdbs.append(f"{mac} {underlay}.{1 + i % 250}")
    return {"routes": sorted(routes), "neighs": sorted(neighs), "fdbs": sorted(fdbs)}


def create_vxlan(ns: str, *, vni: int = 1, mtu: int = 1450) -> Any:
    return run_child(ns, "create-vxlan", str(vni), str(mtu))


@pytest.fixture
def netns() -> Iterator[str]:
    """A namespace with a veth underlay (veth0 192.168.77.1/24, peer veth1 up)."""
    name = f"ovnl-t{os.getpid()}-{next(_ids)}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "-n", name, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
        sh("ip", "-n", name, "addr", "add", "192.168.77.1/24", "dev", "veth0")
        sh("ip", "-n", name, "link", "set", "veth0", "up")
        sh("ip", "-n", name, "link", "set", "veth1", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def vxns(netns: str) -> str:
    """``netns`` with the VXLAN device vx0 created by link.py."""
    create_vxlan(netns)
    return netns


def kernel_view(ns: str) -> dict[str, list[str]]:
    """What iproute2 says overlayd-owned entries on vx0 are."""
    routes = json.loads(sh("ip", "-n", ns, "-j", "route", "show", "proto", "157", "dev", "vx0"))
    neighs = json.loads(sh("ip", "-n", ns, "-j", "neigh", "show", "dev", "vx0", "nud", "permanent"))
    fdbs = json.loads(sh("bridge", "-n", ns, "-j", "fdb", "show", "dev", "vx0"))
    return {
        "routes": sorted(f"{r['dst']} via {r['gateway']}" for r in routes),
        "neighs": sorted(f"{n['dst']} {n['lladdr']}" for n in neighs),
        "fdbs": sorted(f"{f['mac']} {f['dst']}" for f in fdbs if "dst" in f),
    }


def test_vxlan_device_matches_spec(netns: str) -> None:
    first = create_vxlan(netns)
    assert first["action"] == "created"
    assert first["addresses"] == ["10.99.0.0/32"]
    link = json.loads(sh("ip", "-n", netns, "-d", "-j", "link", "show", "vx0"))[0]
    info = link["linkinfo"]["info_data"]
    assert (info["id"], info["port"], info["local"]) == (1, 8472, "192.168.77.1")
    assert info["link"] == "veth0"
    assert info["learning"] is False
    assert link["address"] == "02:42:00:00:00:01"
    assert link["mtu"] == 1450
    assert "UP" in link["flags"]
    # A /32 adds no subnet route for the device.
    assert sh("ip", "-n", netns, "route", "show", "dev", "vx0").strip() == ""

    again = create_vxlan(netns)
    assert (again["action"], again["address_changed"]) == ("unchanged", False)


def test_tx_checksum_offload_is_off(vxns: str) -> None:
    features = sh("ip", "netns", "exec", vxns, "ethtool", "-k", "vx0")
    assert "tx-checksumming: off" in features
    assert "tx-checksum-ip-generic: off" in features
    # Turned back on by hand, the next ensure turns it off again.
    sh("ip", "netns", "exec", vxns, "ethtool", "-K", "vx0", "tx", "on")
    assert "tx-checksumming: on" in sh("ip", "netns", "exec", vxns, "ethtool", "-k", "vx0")
    create_vxlan(vxns)
    assert "tx-checksumming: off" in sh("ip", "netns", "exec", vxns, "ethtool", "-k", "vx0")


def test_vxlan_drift_is_fixed_in_place_or_by_recreating(vxns: str) -> None:
    index = json.loads(sh("ip", "-n", vxns, "-j", "link", "show", "vx0"))[0]["ifindex"]
    sh("ip", "-n", vxns, "link", "set", "vx0", "mtu", "1300", "address", "02:42:00:00:00:99")
    sh("ip", "-n", vxns, "link", "set", "vx0", "type", "vxlan", "learning")
    sh("ip", "-n", vxns, "link", "set", "vx0", "down")
    sh("ip", "-n", vxns, "addr", "add", "10.1.1.1/24", "dev", "vx0")
    fixed = create_vxlan(vxns)
    assert fixed["action"] == "updated"
    assert sorted(fixed["fixed"]) == ["learning", "mac", "mtu"]
    assert fixed["index"] == index
    assert fixed["addresses"] == ["10.99.0.0/32"]
    link = json.loads(sh("ip", "-n", vxns, "-d", "-j", "link", "show", "vx0"))[0]
    assert (link["mtu"], link["address"]) == (1450, "02:42:00:00:00:01")
    assert link["linkinfo"]["info_data"]["learning"] is False
    assert "UP" in link["flags"]

    recreated = create_vxlan(vxns, vni=7)
    assert (recreated["action"], recreated["fixed"]) == ("recreated", ["vni"])
    link = json.loads(sh("ip", "-n", vxns, "-d", "-j", "link", "show", "vx0"))[0]
    assert link["linkinfo"]["info_data"]["id"] == 7


def test_apply_and_dump_round_trip(vxns: str) -> None:
    out = run_child(vxns, "round-trip")
    assert out["errors"] == []
    assert out["ok"] == 900
    assert out["dump"] == state_json(range(300))
    assert out["rediff"] == 0
    assert kernel_view(vxns) == state_json(range(300))
    routes = json.loads(sh("ip", "-n", vxns, "-j", "route", "show", "proto", "157"))
    assert all("onlink" in r["flags"] and r["dev"] == "vx0" for r in routes)


def test_changes_replace_and_delete(vxns: str) -> None:
    out = run_child(vxns, "replace-delete")
    assert out["summary"] == "+10/-10 routes, +10/-10 neigh, +20/-10 fdb"
    assert out["errors"] == 0
    expected = state_json(range(10), "198.51.100")
    rest = state_json(range(10, 40))
    new = state_json(range(50, 60))
    for key in expected:
        expected[key] = sorted(expected[key] + rest[key] + new[key])
    assert out["dump"] == expected
    assert kernel_view(vxns) == expected
    # The moved FDB entry has exactly one remote, the new one.
    fdb = sh("bridge", "-n", vxns, "fdb", "show", "dev", "vx0").splitlines()
    assert [line.split()[2] for line in fdb if line.startswith("02:aa:00:00:00:03 ")] == [
        "198.51.100.4"
    ]


def test_foreign_entries_are_not_dumped_or_touched(vxns: str) -> None:
    ns = vxns
    sh("ip", "-n", ns, "route", "add", "10.200.0.0/24", "dev", "vx0", "proto", "static")
    sh("ip", "-n", ns, "route", "add", "10.201.0.0/24", "via", "192.168.77.9", "proto", "157")
    sh("ip", "-n", ns, "route", "add", "10.100.0.0/24", "via", "10.100.0.0", "dev", "vx0",
       "onlink", "table", "100", "proto", "157")  # fmt: skip
    sh("ip", "-n", ns, "neigh", "add", "192.168.77.5", "lladdr", "02:00:00:00:00:05",
       "dev", "veth1", "nud", "permanent")  # fmt: skip
    sh("ip", "-n", ns, "neigh", "add", "10.100.9.9", "lladdr", "02:00:00:00:00:06",
       "dev", "vx0", "nud", "reachable")  # fmt: skip
    # IPv4 only: IPv6 link-local routes of the new links still come and go meanwhile
    before = sh("ip", "-4", "-n", ns, "-d", "route", "show", "table", "all")
    out = run_child(ns, "foreign")
    assert out["empty"] == 0
    assert out["full"] == state_json(range(5))
    assert out["errors"] == []
    assert out["final"] == 0
    assert sh("ip", "-4", "-n", ns, "-d", "route", "show", "table", "all") == before
    assert "02:00:00:00:00:05" in sh("ip", "-n", ns, "neigh", "show", "dev", "veth1")
    assert "10.100.9.9" in sh("ip", "-n", ns, "neigh", "show", "dev", "vx0")


def test_failures_are_reported_per_entry_without_stopping_the_batch(vxns: str) -> None:
    out = run_child(vxns, "failures")
    assert out["ok"] == 40
    assert len(out["errors"]) == 1
    assert out["errors"][0]["entry"] == "10.250.0.0/24"
    assert out["errors"][0]["errno"] == 22  # EINVAL, with the kernel's reason
    assert "gateway" in out["errors"][0]["message"].lower()
    assert out["routes"] == 40


def test_monitor_reports_entries_deleted_by_hand(vxns: str) -> None:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", vxns, *tool("netlink_child", "monitor-deleted")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "monitor child did not start"
        assert proc.stdout.readline().strip() == "ready"
        sh("ip", "-n", vxns, "route", "del", "10.100.3.0/24")
        sh("ip", "-n", vxns, "neigh", "del", "10.100.4.0", "dev", "vx0")
        # Replacing our route with another protocol sends no DEL for ours.
        sh("ip", "-n", vxns, "route", "replace", "10.100.5.0/24", "dev", "vx0", "proto", "static")
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    out = json.loads(stdout.strip().splitlines()[-1])
    changed = [(e["kind"], e["action"], e["owned"], e["key"]) for e in out["seen"] if e["changed"]]
    # The kernel announces a deleted neighbour as NEW in state FAILED before the DEL:
    # either way it stops being ours, once.
    assert changed == [
        ("RouteMessage", "del", True, "10.100.3.0/24"),
        ("NeighMessage", "new", False, "10.100.4.0"),
        ("RouteMessage", "new", False, "10.100.5.0/24"),
    ]
    expected = state_json(range(20))
    expected["routes"].remove("10.100.3.0/24 via 10.100.3.0")
    expected["routes"].remove("10.100.5.0/24 via 10.100.5.0")
    expected["neighs"].remove("10.100.4.0 02:aa:00:00:00:04")
    assert out["picture"] == expected


def test_monitor_reports_lost_notifications(vxns: str) -> None:
    out = run_child(vxns, "monitor-lost")
    assert len(out["resync"]) == 1
    assert "ENOBUFS" in out["resync"][0]
