"""Issue 13: podman containers get DNS names, in the multi-cloud world.

overlayd on a1 (cloud A) and b1 (cloud B); podman (CNI backend) on each with the
``overlay`` plugin, whose ``namesSocket`` is that host's daemon's. A container started on
each host is ``<container>.<node>.overlay.internal`` on every daemon (podman passes the
container name as ``K8S_POD_NAME``); the containers, whose resolver is their node's
responder (``--dns``), ping each other by name; after a container is removed (CNI DEL)
its name is NXDOMAIN everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import pytest

from tests.cni.test_e2e_multicloud import Node, podman_nodes
from tests.daemons import ns_run, wait_until
from tests.lab.world import World, build_multicloud_world, destroy

pytestmark = pytest.mark.root
ZONE = "overlay.internal"


@pytest.fixture
def nodes(prefix_factory: Callable[[], str], tmp_path: Path) -> Iterator[dict[str, Node]]:
    """The world, overlayd on a1 and b1, podman with an overlay network naming containers."""
    with ExitStack() as stack:
        world: World = build_multicloud_world(prefix_factory(), workdir=tmp_path / "world")
        stack.callback(destroy, world)
        yield podman_nodes(stack, world, tmp_path, names=True)


def dig(on: Node, name: str) -> str:
    """What ``on``'s daemon answers for ``name``: the address, or dig's status."""
    server = str(on.daemon.overlay_ip())
    out = ns_run(on.ns, "dig", f"@{server}", "+time=1", "+tries=2", name, "+noall",
                 "+answer", "+comments", check=False).stdout  # fmt: skip
    answers = [ln.split()[-1] for ln in out.splitlines() if ln and not ln.startswith(";")]
    if answers:
        return answers[0]
    return out.split("status: ", 1)[1].split(",", 1)[0] if "status: " in out else "no answer"


def answers(on: Node, name: str, wanted: str) -> bool:
    return dig(on, name) == wanted


def pings_by_name(src: Node, name: str) -> bool:
    out = src.exec("ping", "-c", "1", "-W", "1", name, check=False)
    return "1 packets received" in out


def test_containers_resolve_and_ping_each_other_by_name(nodes: dict[str, Node]) -> None:
    a, b = nodes["a1"], nodes["b1"]
    names: dict[str, str] = {}
    for node in (a, b):
        dns = ("--dns", str(node.daemon.overlay_ip()))
        node.podman.run_container(node.container, node.network, options=dns)
        names[node.name] = f"{node.container}.{node.name}.{ZONE}"
    addresses = {n.name: str(n.podman.address(n.container).ip) for n in (a, b)}
    for on in (a, b):  # every daemon answers every node's containers
        for node in (a, b):
            wait_until(partial(answers, on, names[node.name], addresses[node.name]), 15,
                       f"{on.name} resolves {names[node.name]}")  # fmt: skip
    wait_until(partial(pings_by_name, a, names["b1"]), 20, "a1's container pings b1's by name")
    assert pings_by_name(b, names["a1"])
    b.podman.remove_container(b.container)
    for on in (a, b):
        wait_until(partial(answers, on, names["b1"], "NXDOMAIN"), 15,
                   f"{on.name}: the removed container's name gone")  # fmt: skip
    assert dig(a, names["a1"]) == addresses["a1"]  # the other container keeps its name
