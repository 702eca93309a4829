"""Safer defaults (issue 9), in the multi-cloud world with real etcd and real daemons.

* ``overlayctl network init`` without ``--backend`` writes ``vxlan+wireguard``: daemons
  reach peers of their own site over VXLAN and peers of other sites over WireGuard, and
  none of them warns about plain VXLAN.
* With ``--backend vxlan``, a daemon with peers in other sites logs the plain-VXLAN warning
  exactly once however many reconciles follow; after its last cross-site peer left it says
  so once, and warns again only when a cross-site peer comes back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd.values.config import VXLAN_WIREGUARD
from tests.daemons import BIN, OverlaydProc, full_matrix, ns_run, running, wait_until
from tests.lab.world import World, build_multicloud_world, destroy

pytestmark = pytest.mark.root

HOSTS = ("a1", "a2", "b1")  # a1, a2: site cloud-a; b1: cloud-b
WARNING = re.compile(r" WARNING overlayd: .*plain VXLAN: traffic between sites is neither "
                     r"encrypted nor authenticated")  # fmt: skip
GONE = "no peer of another site is reached over plain VXLAN any more"


@pytest.fixture
def world(prefix: str, tmp_path: Path) -> Iterator[World]:
    w = build_multicloud_world(prefix, workdir=tmp_path / "world")
    try:
        yield w
    finally:
        destroy(w)


def ctl(world: World, *args: str) -> str:
    argv = [str(BIN / "overlayctl"), "--etcd-endpoints", world.etcd_endpoint, *args]
    return ns_run(world.host("a1").ns.name, *argv).stdout


def full_log(d: OverlaydProc) -> str:
    return d.log_file.read_text()


def warnings(d: OverlaydProc) -> int:
    return len(WARNING.findall(full_log(d)))


def reconciles(d: OverlaydProc) -> int:
    status = d.status()
    return int(status["reconciles"]) if status else 0


def test_init_default_is_vxlan_wireguard_and_no_daemon_warns(world: World) -> None:
    written = json.loads(ctl(world, "network", "init", "--network", "10.244.0.0/16"))
    assert written["Backend"]["Type"] == VXLAN_WIREGUARD
    with running(world, HOSTS) as daemons:
        full_matrix(daemons)
        a1 = daemons["a1"]
        routes = ns_run(a1.ns, "ip", "route", "show", "proto", "157").stdout
        b1, a2 = str(daemons["b1"].overlay_ip()), str(daemons["a2"].overlay_ip())
        assert re.search(rf"via {re.escape(a2)} dev overlay\.1 ", routes), routes  # in site
        assert re.search(rf"via {re.escape(b1)} dev ovwg", routes), routes  # across: WireGuard
        before = reconciles(a1)
        wait_until(lambda: reconciles(a1) >= before + 3, 30, "three more reconciles on a1")
        for d in daemons.values():
            assert "backend vxlan+wireguard" in full_log(d)
            assert warnings(d) == 0, f"{d.node} warned about plain VXLAN:\n{d.log()}"


def test_vxlan_daemon_with_a_cross_site_peer_warns_exactly_once(world: World) -> None:
    ctl(world, "network", "init", "--network", "10.244.0.0/16", "--backend", "vxlan")
    with running(world, HOSTS) as daemons:
        full_matrix(daemons)
        a1, b1 = daemons["a1"], daemons["b1"]
        wait_until(lambda: warnings(a1) >= 1, 15, "a1's plain-VXLAN warning")
        before = reconciles(a1)
        # resync every 5 s, probes and lease renewals: several more passes, no more lines
        wait_until(lambda: reconciles(a1) >= before + 3, 30, "three more reconciles on a1")
        for d in daemons.values():
            assert warnings(d) == 1, f"{d.node}: {warnings(d)} warnings:\n{d.log()}"
        line = WARNING.search(full_log(a1))
        assert line is not None
        text = full_log(a1)[line.start() :].splitlines()[0]
        assert "1 peer(s) in other sites ('cloud-b')" in text, text
        assert "--backend vxlan+wireguard" in text, text

        # b1 leaves (its lease revoked while it is down): a1 says so once ...
        b1.kill9()
        ctl(world, "leases", "revoke", "b1")
        wait_until(lambda: GONE in full_log(a1), 15, "a1: no cross-site peer any more")
        assert warnings(a1) == 1
        # ... and warns again when it comes back
        b1.start()
        b1.wait_ready()
        wait_until(lambda: a1.pings(b1), 20, "a1 -> b1 again")
        wait_until(lambda: warnings(a1) == 2, 15, "a1's second warning")
        assert full_log(a1).count(GONE) == 1
