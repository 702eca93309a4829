"""``netlink_child SCENARIO [ARGS]``: overlayd's netlink adapter inside a test namespace.

The body of tests/integration/test_netlink_kernel.py: the test stays in the root namespace
and runs one scenario here; the scenario prints one JSON line last (the monitor scenario
prints ``ready`` first, then waits for the test's changes). Peer ``i``'s entries are built
the same way everywhere (``peer``), so the test can compute the same state on its side.
Every scenario but ``create-vxlan`` works on the VXLAN device ``vx0``.
"""

from __future__ import annotations

import json
import queue
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from overlayd.dataplane.netlink.link import Links, VxlanSpec
from overlayd.dataplane.netlink.monitor import KernelEvent, Monitor, MonitorEvent, ResyncNeeded
from overlayd.dataplane.netlink.rtnl import Rtnl
from overlayd.dataplane.netlink.rtnl_messages import EntryMessage, NeighMessage, RouteMessage
from overlayd.values.kernel_state import (
    Changes,
    FdbEntry,
    KernelState,
    MacAddress,
    NeighEntry,
    RouteEntry,
    diff,
)

DEVICE = "vx0"


def peer(i: int, underlay: str = "192.0.2") -> tuple[RouteEntry, NeighEntry, FdbEntry]:
    """Route, neighbour and FDB entry of synthetic peer ``i`` (10.<100 + i // 250>.<i>.0/24)."""
    net = IPv4Network(f"10.{100 + i // 250}.{i % 250}.0/24")
    mac = MacAddress.from_bytes(bytes([2, 0xAA, 0, 0, i // 256, i % 256]))
    return (
        RouteEntry(net, net.network_address),
        NeighEntry(net.network_address, mac),
        FdbEntry(mac, IPv4Address(f"{underlay}.{1 + i % 250}")),
    )


def desired(ids: Iterable[int], underlay: str = "192.0.2") -> KernelState:
    """The kernel state of peers ``ids``."""
    peers = [peer(i, underlay) for i in ids]
    return KernelState.of([p[0] for p in peers], [p[1] for p in peers], [p[2] for p in peers])


def state_json(state: KernelState) -> dict[str, list[str]]:
    """``state`` as sorted strings (what the test compares with iproute2's view)."""
    return {
        "routes": sorted(f"{r.dst} via {r.via}" for r in state.routes.values()),
        "neighs": sorted(f"{n.ip} {n.mac}" for n in state.neighs.values()),
        "fdbs": sorted(f"{f.mac} {f.dst}" for f in state.fdbs.values()),
    }


def key(message: EntryMessage) -> str:
    """What a monitored message is about: a route's destination, a neighbour's IP, a MAC."""
    if isinstance(message, RouteMessage):
        return str(message.dst)
    return str(message.ip if isinstance(message, NeighMessage) else message.mac)


def create_vxlan(vni: int, mtu: int) -> dict[str, Any]:
    """Create (or fix) vx0 on veth0 with ``vni`` and ``mtu``, address 10.99.0.0/32."""
    with Links() as links:
        u = links.resolve_underlay("veth0")
        spec = VxlanSpec(
            DEVICE, vni, 8472, u.address, u.link.index, MacAddress("02:42:00:00:00:01"), mtu
        )
        r = links.ensure_vxlan(spec)
        changed = links.set_address(DEVICE, IPv4Interface("10.99.0.0/32"))
        link = links.get(DEVICE)
        assert link is not None
        return {
            "action": r.action.value,
            "fixed": list(r.fixed),
            "index": r.link.index,
            "address_changed": changed,
            "addresses": [str(a) for a in link.addresses],
        }


def round_trip(ifindex: int) -> dict[str, Any]:
    """Apply 300 peers in several batches; dump them back and diff again."""
    want = desired(range(300))
    with Rtnl() as rtnl:
        rtnl.batch_size = 97  # several sends, ACKs matched across them
        result = rtnl.apply(ifindex, diff(want, KernelState()))
        got = rtnl.dump(ifindex)
        again = diff(want, got)
    return {
        "ok": result.ok,
        "errors": [str(e) for e in result.errors],
        "dump": state_json(got),
        "rediff": len(again),
    }


def replace_delete(ifindex: int) -> dict[str, Any]:
    """50 peers; then peers 0-9 move to another underlay, 40-49 leave, 50-59 join."""
    with Rtnl() as rtnl:
        rtnl.apply(ifindex, diff(desired(range(50)), KernelState()))
        want = desired(range(10), "198.51.100")
        for extra in (desired(range(10, 40)), desired(range(50, 60))):
            want.routes.update(extra.routes)
            want.neighs.update(extra.neighs)
            want.fdbs.update(extra.fdbs)
        changes = diff(want, rtnl.dump(ifindex))
        result = rtnl.apply(ifindex, changes)
        got = rtnl.dump(ifindex)
    return {"summary": changes.summary(), "errors": len(result.errors), "dump": state_json(got)}


def foreign(ifindex: int) -> dict[str, Any]:
    """Dump around entries that are not ours; apply 5 peers, delete them twice."""
    with Rtnl() as rtnl:
        empty = rtnl.dump(ifindex)
        rtnl.apply(ifindex, diff(desired(range(5)), KernelState()))
        full = rtnl.dump(ifindex)
        result = rtnl.apply(ifindex, diff(KernelState(), full))
        # Deleting what is already gone is not an error.
        twice = rtnl.apply(ifindex, diff(KernelState(), full))
        final = rtnl.dump(ifindex)
    return {
        "empty": empty.size(),
        "full": state_json(full),
        "errors": [str(e) for e in result.errors + twice.errors],
        "final": final.size(),
    }


def failures(ifindex: int) -> dict[str, Any]:
    """One invalid route in the middle of 40 good ones."""
    want = desired(range(40))
    bad = RouteEntry(IPv4Network("10.250.0.0/24"), IPv4Address("224.0.0.5"))
    routes = sorted(want.routes.values())
    changes = Changes(set_routes=(*routes[:20], bad, *routes[20:]))
    with Rtnl() as rtnl:
        result = rtnl.apply(ifindex, changes)
        got = rtnl.dump(ifindex)
    errors = [
        {
            "entry": str(e.entry.dst if isinstance(e.entry, RouteEntry) else e.entry),
            "errno": e.errno,
            "message": e.message,
        }
        for e in result.errors
    ]
    return {"ok": result.ok, "errors": errors, "routes": len(got.routes)}


def monitor_deleted(ifindex: int) -> dict[str, Any]:
    """20 peers, then ``ready``: report what the monitor sees of the test's changes."""
    events: queue.Queue[MonitorEvent] = queue.Queue()

    def on_events(batch: list[MonitorEvent]) -> None:
        for event in batch:
            events.put(event)

    with Rtnl() as rtnl:
        monitor = Monitor(ifindex, on_events)
        monitor.start()
        rtnl.apply(ifindex, diff(desired(range(20)), KernelState()))
        picture = rtnl.dump(ifindex)
    # Drain our own notifications, then tell the test to act.
    _drain(events, 0.5)
    print("ready", flush=True)
    seen: list[dict[str, Any]] = []
    while True:
        try:
            event = events.get(timeout=2 if seen else 20)
        except queue.Empty:
            break
        if isinstance(event, KernelEvent):
            changed = event.apply_to(picture)
            m = event.message
            seen.append(
                {
                    "kind": type(m).__name__,
                    "action": m.action.value,
                    "owned": event.owned,
                    "changed": changed,
                    "key": key(m),
                }
            )
    monitor.stop()
    return {"seen": seen, "picture": state_json(picture)}


def _drain(events: queue.Queue[MonitorEvent], quiet: float) -> None:
    """Take events until none came for ``quiet`` seconds."""
    while True:
        try:
            events.get(timeout=quiet)
        except queue.Empty:
            return


def monitor_lost(ifindex: int) -> dict[str, Any]:
    """A burst into a tiny receive buffer: the monitor must say it lost notifications."""
    got: list[MonitorEvent] = []
    done = threading.Event()

    def on_events(batch: list[MonitorEvent]) -> None:
        got.extend(batch)
        if any(isinstance(e, ResyncNeeded) for e in batch):
            done.set()

    monitor = Monitor(ifindex, on_events, rcvbuf=4096)
    # Block the monitor's reader by not starting it until the burst is queued.
    with Rtnl() as rtnl:
        rtnl.apply(ifindex, diff(desired(range(200)), KernelState()))
    monitor.start()
    done.wait(10)
    monitor.stop()
    return {"resync": [e.reason for e in got if isinstance(e, ResyncNeeded)]}


SCENARIOS: dict[str, Callable[[int], dict[str, Any]]] = {
    "round-trip": round_trip,
    "replace-delete": replace_delete,
    "foreign": foreign,
    "failures": failures,
    "monitor-deleted": monitor_deleted,
    "monitor-lost": monitor_lost,
}


def main(argv: list[str]) -> int:
    if argv[0] == "create-vxlan":
        out = create_vxlan(int(argv[1]), int(argv[2]))
    else:
        out = SCENARIOS[argv[0]](socket.if_nametoindex(DEVICE))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
