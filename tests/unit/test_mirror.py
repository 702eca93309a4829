"""The kernel mirror (overlayd/dataplane/mirror.py) keeps one copy of each peer's
addresses: entries equal to desired ones are stored as the desired objects, under the
desired entries' own key objects (not the copies decoded from the kernel)."""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from overlayd.dataplane.mirror import KernelMirror
from overlayd.dataplane.netlink.monitor import KernelEvent
from overlayd.dataplane.netlink.rtnl_messages import (
    NUD_PERMANENT,
    Action,
    NeighMessage,
    RouteMessage,
)
from overlayd.values.kernel_state import FdbEntry, KernelState, MacAddress, NeighEntry, RouteEntry

IFINDEX = 7


def entries(n: int) -> KernelState:
    """``n`` peers' entries, built afresh (equal, never identical, across calls)."""
    routes, neighs, fdbs = {}, {}, {}
    for i in range(1, n + 1):
        dst, via = IPv4Network(f"10.244.{i}.0/24"), IPv4Address(f"10.244.{i}.0")
        mac = MacAddress(f"02:00:00:00:00:{i:02x}")
        routes[dst] = RouteEntry(dst, via)
        neighs[via] = NeighEntry(via, mac)
        fdbs[mac] = FdbEntry(mac, IPv4Address(f"192.0.2.{i}"))
    return KernelState(routes=routes, neighs=neighs, fdbs=fdbs)


def same_objects(have: Mapping[Any, object], want: Mapping[Any, object]) -> bool:
    """Whether every key and value of ``have`` is the very object ``want`` holds."""
    canonical = {id(k) for k in want}
    return all(id(k) in canonical and have[k] is want[k] for k in have)


def keys_are_desired(mirror: KernelMirror, desired: KernelState) -> bool:
    state = mirror.state
    return (
        same_objects(state.routes, desired.routes)
        and same_objects(state.neighs, desired.neighs)
        and same_objects(state.fdbs, desired.fdbs)
    )


def test_empty_dump() -> None:
    mirror = KernelMirror()
    mirror.replace(KernelState(), entries(3))
    assert mirror.state == KernelState()


def test_a_dump_equal_to_the_plan_keeps_only_the_plans_objects() -> None:
    desired = entries(5)
    mirror = KernelMirror()
    mirror.replace(entries(5), desired)
    assert mirror.state == desired
    assert keys_are_desired(mirror, desired)


def test_entries_that_differ_keep_what_the_kernel_has() -> None:
    desired = entries(2)
    dumped = entries(2)
    dst = IPv4Network("10.244.1.0/24")
    dumped.routes[dst] = RouteEntry(dst, IPv4Address("10.244.9.0"))  # drifted
    mirror = KernelMirror()
    mirror.replace(dumped, desired)
    assert mirror.state.routes[dst] == dumped.routes[dst]
    assert mirror.state.neighs == desired.neighs and mirror.state.fdbs == desired.fdbs


def test_notifications_of_our_own_entries_keep_the_plans_objects() -> None:
    desired = entries(3)
    mirror = KernelMirror()
    copy = entries(3)  # what the kernel's notifications decode to
    for entry in copy.routes.values():
        msg = RouteMessage(
            Action.NEW, entry.dst, entry.via, IFINDEX, 254, 157, 0, 1, 4, 0, replaced=False
        )
        assert not mirror.absorb(KernelEvent(msg, owned=True), desired)
    for neigh in copy.neighs.values():
        event = KernelEvent(
            NeighMessage(Action.NEW, IFINDEX, neigh.ip, neigh.mac, NUD_PERMANENT, 0), owned=True
        )
        assert not mirror.absorb(event, desired)
    assert mirror.state.routes == desired.routes and mirror.state.neighs == desired.neighs
    only = KernelState(routes=desired.routes, neighs=desired.neighs)
    assert keys_are_desired(mirror, only)
