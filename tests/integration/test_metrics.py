"""``/metrics`` of real daemons in the multi-cloud world (issue 14): the scrape parses with
prometheus_client's parser, shows the network, and moves when a path breaks and heals.

a1 (cloud A) reaches a2 over cloud A's LAN (private), b1 and bare over the internet
(public). Dropping, in a1's namespace, a2's private address and b1's public one moves a2
to its public path (a path change) and leaves b1 with no verified path (unverified);
removing the drops brings both back.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemons import BIN, OverlaydProc, ns_run, running, wait_until
from tests.lab.netns import tool
from tests.lab.world import World, drop_between, multicloud_world

pytestmark = pytest.mark.root
HOSTS = ("a1", "a2", "b1", "bare")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def world(prefix: str, tmp_path: Path) -> Iterator[World]:
    with multicloud_world(prefix, workdir=tmp_path) as w:
        ns_run(w.host("a1").ns.name, str(BIN / "overlayctl"), "--etcd-endpoints",
               w.etcd_endpoint, "network", "init", "--network", "10.244.0.0/16",
               "--backend", "vxlan")  # fmt: skip
        yield w


def scrape(d: OverlaydProc) -> dict[str, Samples]:
    """``d``'s ``/metrics``, fetched inside its namespace, as Prometheus parses it."""
    url = f"http://127.0.0.1:{d.healthz_port}/metrics"
    body = ns_run(d.ns, *tool("http_get", url, "5")).stdout
    out: dict[str, Samples] = {}
    for family in text_string_to_metric_families(body):
        samples = out.setdefault(family.name, {})
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def kinds(found: dict[str, Samples]) -> dict[str, float]:
    return {dict(k[1])["kind"]: v for k, v in found["overlayd_peers"].items()}


def changes(found: dict[str, Samples], kind: str) -> float:
    return found["overlayd_path_changes"][("overlayd_path_changes_total", (("kind", kind),))]


def settled(d: OverlaydProc) -> bool:
    """Whether ``d`` counts its 3 peers on verified paths of their own (the bare host's
    lease address is a path of kind private: overlayd/values/paths.py)."""
    found = kinds(scrape(d))
    return found["private"] + found["public"] == len(HOSTS) - 1


def wait_settled(d: OverlaydProc, what: str) -> None:
    """Until ``settled`` (what it saw and its ``/peers`` on failure)."""
    try:
        wait_until(partial(settled, d), 40, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {kinds(scrape(d))}\n{d.peers()}\n{d.log()}") from None


FLOOD = 200
GARBAGE = (
    "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "for size in [40, 200] * int(sys.argv[2]): s.sendto(b'\\xff' * size, (sys.argv[1], 8473))"
)  # shorter than any probe ("malformed"), or without the probes' magic ("magic"); no STUN


def rejected(d: OverlaydProc, reason: str) -> float:
    found = scrape(d)["overlayd_probe_rejects"]
    return found[("overlayd_probe_rejects_total", (("reason", reason),))]


def test_a_flood_from_the_internet_is_counted_as_rejects(world: World) -> None:
    with running(world, ("a1", "bare"), public_ip=False) as daemons:
        bare = daemons["bare"]
        assert rejected(bare, "magic") == rejected(bare, "malformed") == 0
        inet = next(n for n in world.namespaces if n.name.endswith("inet"))
        ns_run(inet.name, sys.executable, "-c", GARBAGE, str(world.host("bare").ip), str(FLOOD))

        def counted() -> bool:
            return rejected(bare, "magic") == rejected(bare, "malformed") == FLOOD

        wait_until(counted, 10, f"{FLOOD} rejects of each reason counted")
        assert rejected(bare, "mac") == 0
        assert kinds(scrape(bare))["none"] == 0  # a1 is still reached


def test_metrics_move_when_a_path_breaks_and_heals(world: World) -> None:
    with running(world, HOSTS, public_ip=False) as daemons:
        a1 = daemons["a1"]
        wait_settled(a1, "a1: every peer verified")
        found = scrape(a1)
        assert sum(kinds(found).values()) == 3 and kinds(found)["private"] >= 1
        rtt = found["overlayd_probe_rtt_seconds"]
        counts = {dict(k[1])["site"]: v for k, v in rtt.items() if k[0].endswith("_count")}
        assert set(counts) == {"cloud-a", "cloud-b", "bare"} and min(counts.values()) > 0
        ops = found["overlayd_kernel_operations"]
        fdb = ("overlayd_kernel_operations_total",
               (("device", "vxlan"), ("entry", "fdb"), ("op", "set")))  # fmt: skip
        assert ops[fdb] >= 3
        passes = found["overlayd_reconcile_passes"]
        assert passes[("overlayd_reconcile_passes_total", (("result", "ok"),))] > 0
        assert found["overlayd_lease_held"][("overlayd_lease_held", ())] == 1
        assert found["overlayd_probes_sent"][("overlayd_probes_sent_total", ())] > 0
        before_public, before_private = changes(found, "public"), changes(found, "private")

        a2_private, b1_public = world.host("a2").ip, world.host("b1").public
        assert b1_public is not None
        with drop_between(a1.host.ns, a2_private), drop_between(a1.host.ns, b1_public):

            def broken() -> bool:
                now = scrape(a1)
                return kinds(now)["unverified"] >= 1 and changes(now, "public") > before_public

            wait_until(broken, 20, "b1 unverified and a2 moved to its public path")
            losses = scrape(a1)["overlayd_probe_losses"]
            assert losses[("overlayd_probe_losses_total", ())] > 0

        def healed() -> bool:
            return settled(a1) and changes(scrape(a1), "private") > before_private

        wait_until(healed, 40, "a2 back on its private path, b1 verified again")
