"""Issue 9: the status port is not reachable from the internet, and hostile HTTP against a
real daemon leaves it answering with a short log and no traceback (multi-cloud world).

``a1`` (1:1 NAT, public 198.51.100.11 only on its router) and ``bare`` (public 192.0.2.31
on its interface) run with the default ``--healthz-ip``; ``b1`` (public 203.0.113.21 on
its router) adds ``--healthz-ip overlay`` and is read by ``a1`` over the overlay.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from tests.daemons import BIN, OverlaydProc, full_matrix, ns_run
from tests.lab.netns import Namespace, tool
from tests.lab.world import World, build_multicloud_world, destroy, ping

pytestmark = pytest.mark.root
PORT = 10256
ATTACK = Path(__file__).with_name("http_attack.py")
OVERLAY_FLAGS = ("--healthz-ip", "127.0.0.1", "--healthz-ip", "overlay")


@pytest.fixture(scope="module")
def world(
    prefix_factory: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    w = build_multicloud_world(prefix_factory(), workdir=tmp_path_factory.mktemp("status"))
    try:
        ns_run(w.host("a1").ns.name, str(BIN / "overlayctl"), "--etcd-endpoints",
               w.etcd_endpoint, "network", "init", "--network", "10.244.0.0/16")  # fmt: skip
        yield w
    finally:
        destroy(w)


@pytest.fixture(scope="module")
def daemons(world: World) -> Iterator[dict[str, OverlaydProc]]:
    procs = {
        "a1": OverlaydProc(world, world.host("a1")),
        "bare": OverlaydProc(world, world.host("bare")),
        "b1": OverlaydProc(world, world.host("b1"), extra=OVERLAY_FLAGS),
    }
    try:
        for p in procs.values():
            p.start()
        for p in procs.values():
            p.wait_ready()
        full_matrix(procs)
        yield procs
    finally:
        for p in procs.values():
            p.kill9()


def inet(world: World) -> Namespace:
    """The world's internet namespace (``<prefix>inet``), where attackers live."""
    return next(ns for ns in world.namespaces if ns.name == f"{world.prefix}inet")


def connect(ns: str, address: IPv4Address | str, port: int = PORT) -> str:
    """From ``ns``: 'refused', 'timeout', or the first line of a GET /status answer."""
    return ns_run(ns, *tool("http_first_line", str(address), str(port)), timeout=15).stdout.strip()


def read_status(ns: str, address: IPv4Address) -> dict[str, object]:
    url = f"http://{address}:{PORT}/status"
    return dict(json.loads(ns_run(ns, *tool("http_get", url, "3"), timeout=15).stdout))


@pytest.mark.parametrize("name", ["bare", "a1", "b1"])
def test_status_port_is_not_reachable_from_the_internet(
    world: World, daemons: dict[str, OverlaydProc], name: str
) -> None:
    public = world.host(name).public
    assert public is not None
    # the host's public address answers from the internet: the check below is not vacuous
    assert ping(inet(world), public, count=1).ok
    assert connect(inet(world).name, public) in ("refused", "timeout")
    # ... while on the host itself the port answers
    assert connect(daemons[name].ns, "127.0.0.1") == "HTTP/1.1 200 OK"


def test_overlay_bind_answers_peers_over_the_overlay(daemons: dict[str, OverlaydProc]) -> None:
    b1 = daemons["b1"]
    found = read_status(daemons["a1"].ns, b1.overlay_ip())
    assert found["node"] == "b1"
    assert "readable by every host and container on the overlay network 10.244.0.0/16" in b1.log()
    # a1 did not ask for it: its overlay address does not serve the port
    assert connect(daemons["bare"].ns, daemons["a1"].overlay_ip()) in ("refused", "timeout")


def test_hostile_http_leaves_the_daemon_answering_with_a_short_log(
    daemons: dict[str, OverlaydProc],
) -> None:
    d = daemons["bare"]
    before = d.log_file.read_text()
    out = ns_run(d.ns, str(BIN / "python"), str(ATTACK), "127.0.0.1", str(PORT), timeout=90)
    found = json.loads(out.stdout)
    assert d.alive() and d.status() is not None
    added = d.log_file.read_text()[len(before) :]
    assert "Traceback" not in added and "Task was destroyed" not in added, added[-3000:]
    lines = added.splitlines()
    assert len(lines) <= 8, lines
    assert all(len(line) < 400 for line in lines), lines
    for kind in ("oversize", "garbage", "headers"):
        assert set(found[kind]) <= {400, 0}, (kind, sorted(set(found[kind])))
        assert found[kind].count(400) >= len(found[kind]) - 2, kind
    lifetimes = found["loris"]
    assert all(t is not None and t < 7 for t in lifetimes), sorted(map(str, lifetimes))[-5:]
    assert max(found["waits"]) < 1.5, found["waits"]  # real requests get through meanwhile
