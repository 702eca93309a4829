"""The gateway topology in the multi-cloud world, shared by its tests and its benchmark."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tests.daemons import BIN, Background, OverlaydProc, ns_run, wait_until
from tests.lab.world import World

HOSTS = ("a1", "a2", "a3", "b1", "b2", "bare")
INTERVAL = 0.05


def init_gateway_network(w: World) -> None:
    ns_run(w.host("a1").ns.name, str(BIN / "overlayctl"), "--etcd-endpoints", w.etcd_endpoint,
           "network", "init", "--network", "10.244.0.0/16", "--backend", "vxlan+wireguard",
           "--topology", "gateway")  # fmt: skip


def gateway_of(w: World, site: str) -> str | None:
    key = f"/overlayd/network/gw/site/{site}"
    argv = ["etcdctl", "--endpoints", w.etcd_endpoint, "get", key, "--print-value-only"]
    out = w.etcd_ns.run(argv).stdout
    return json.loads(out)["Node"] if out.strip() else None


def wireguard_peers(d: OverlaydProc) -> list[str]:
    links = ns_run(d.ns, "ip", "-o", "link", "show").stdout
    dev = next(part.split("@")[0] for part in links.split() if part.startswith("ovwg"))
    return ns_run(d.ns, "wg", "show", dev.rstrip(":"), "peers").stdout.split()


def outage(
    world: World, daemons: dict[str, OverlaydProc], break_gateway: Callable[[str], None]
) -> tuple[str, str, float]:
    """Break cloud A's gateway while a member pings b1; (old, new gateway, seconds lost)."""
    old = gateway_of(world, "cloud-a")
    assert old is not None
    member = next(n for n in ("a1", "a2", "a3") if n != old)
    bg = Background(daemons[member], daemons["b1"], interval=INTERVAL)
    time.sleep(1)
    break_gateway(old)
    wait_until(lambda: gateway_of(world, "cloud-a") not in (None, old), 15, "a new gateway")
    wait_until(lambda: daemons[member].pings(daemons["b1"]), 15, "traffic through it")
    time.sleep(1)
    sent, received = bg.stop()
    new = gateway_of(world, "cloud-a")
    assert new is not None
    return old, new, (sent - received) * INTERVAL


def drop_forwarded(daemons: dict[str, OverlaydProc], name: str) -> None:
    """``name`` keeps running but silently drops every forwarded packet."""
    daemons[name].host.ns.nft(
        "table inet ovdrop {\n chain forwarding {\n"
        "  type filter hook forward priority 0; policy drop;\n }\n}\n"
    )


def restore_forwarding(daemons: dict[str, OverlaydProc], name: str) -> None:
    daemons[name].host.ns.run(["nft", "delete", "table", "inet", "ovdrop"])


def kill_host(daemons: dict[str, OverlaydProc], name: str) -> None:
    """The daemon and its wireguard-go die: the host is gone.

    Only processes of this host's namespace: ``ip netns exec pkill`` would see (and kill)
    every wireguard-go on the machine, since the pid namespace is shared.
    """
    daemons[name].kill9()
    for pid in daemons[name].host.ns.pids():
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "wireguard-go":
                os.kill(pid, signal.SIGKILL)
