"""Issue 9: the daemon keeps its VXLAN ingress table (docs/backends.md, "Ingress filter").

LAN world, real daemons: the table is ours and holds the peer; flushed or deleted by hand it
is rewritten by the resync tick; SIGTERM leaves it in place with the rest of the data plane;
a daemon of a network without VXLAN removes it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.daemons import BIN, OverlaydProc, full_matrix, ns_run, running, wait_until
from tests.lab.netns import Namespace
from tests.lab.world import World, lan_world

pytestmark = pytest.mark.root
TABLE = ("inet", "overlayd_ingress")


@pytest.fixture
def world(prefix: str) -> Iterator[World]:
    with lan_world(prefix, 2) as w:
        yield w


def _init(world: World, backend: str, *extra: str) -> None:
    ns_run(world.host("h1").ns.name, str(BIN / "overlayctl"), "--etcd-endpoints",
           world.etcd_endpoint, "network", "init", "--network", "10.244.0.0/16",
           "--backend", backend, *extra)  # fmt: skip


def _table(ns: Namespace) -> str | None:
    proc = ns.run(["nft", "list", "table", *TABLE], check=False)
    return proc.stdout if proc.returncode == 0 else None


def test_table_kept_repaired_left_on_stop_removed_without_vxlan(world: World) -> None:
    _init(world, "vxlan")
    h1_ns, h2 = world.host("h1").ns, world.host("h2")
    with running(world, ("h1", "h2")) as daemons:
        full_matrix(daemons)
        wait_until(lambda: str(h2.ip) in (_table(h1_ns) or ""), 10, "h2 in h1's ingress set")
        for tamper in (["flush", "chain", *TABLE, "prerouting"], ["delete", "table", *TABLE]):
            h1_ns.run(["nft", *tamper])
            # the resync tick (every 5 s in tests) reads the table back and rewrites it
            wait_until(
                lambda: (
                    "udp dport 8472" in (_table(h1_ns) or "")
                    and str(h2.ip) in (_table(h1_ns) or "")
                ),
                15,
                f"table restored after {' '.join(tamper[:2])}",
            )
        full_matrix(daemons)
        assert "missing or changed; rewriting" in daemons["h1"].log()
        daemons["h1"].terminate()  # SIGTERM: the data plane, filter included, stays
        assert str(h2.ip) in (_table(h1_ns) or "")
    # a network without VXLAN: the table goes
    _init(world, "wireguard", "--force")
    d = OverlaydProc(world, world.host("h1")).start()
    try:
        d.wait_ready()
        wait_until(lambda: _table(h1_ns) is None, 10, "table removed")
        assert "table inet overlayd_ingress removed" in d.log()
    finally:
        d.kill9()
