"""Peers of other sites over plain VXLAN: which they are, the warning, logged once per state."""

from __future__ import annotations

import dataclasses
import logging
import random
from ipaddress import IPv4Network

import pytest

from overlayd.agent.reconcile import CrossSiteWarning
from overlayd.planning.cleartext import SITES_SHOWN, PlainCrossSite, plain_cross_site
from overlayd.planning.vxlan import Planner
from overlayd.planning.wireguard import plan_wireguard
from overlayd.values.config import VXLAN, VXLAN_WIREGUARD, BackendConfig
from overlayd.values.lease import LeaseRecord
from tests.builders import node_lease

NETWORK = IPv4Network("10.244.0.0/16")


def rec(n: int, site: str, *, vni: int = 1, node: str | None = None, subnet: int | None = None,
        backend: str = VXLAN) -> LeaseRecord:  # fmt: skip
    """Node ``n``: subnet 10.244.n.0/24 (or ``subnet``), underlay 10.0.0.n."""
    return node_lease(
        n,
        f"10.0.0.{n}",
        node=node or f"node{n}",
        subnet=None if subnet is None else f"10.244.{subnet}.0/24",
        vni=vni,
        site=site,
        private_ips=(f"10.0.0.{n}",),
        backend_type=backend,
        public_key="AQ" + "A" * 41 + "=",
        wireguard_port=51820,
    )


ME = rec(1, "a")


def leases(*records: LeaseRecord, me: LeaseRecord = ME) -> dict[IPv4Network, LeaseRecord]:
    return {r.subnet: r for r in (me, *records)}


def test_one_site_is_not_cross_site() -> None:
    found = plain_cross_site(ME, leases(rec(2, "a"), rec(3, "a")))
    assert found == PlainCrossSite() and not found


def test_counts_peers_of_other_sites_and_names_their_sites_sorted() -> None:
    found = plain_cross_site(ME, leases(rec(2, "a"), rec(3, "gcp"), rec(4, "aws"), rec(5, "gcp")))
    assert found == PlainCrossSite(count=3, sites=("aws", "gcp"))
    assert found


def test_skipped_peers_and_me_are_not_programmed() -> None:
    moved_me = rec(1, "old-site", subnet=9)  # our own older lease (same node): not a peer
    foreign_at_my_subnet = rec(7, "b", subnet=1)  # a record at our subnet is not programmed
    records = {**leases(rec(3, "b"), rec(4, "c"), moved_me), ME.subnet: foreign_at_my_subnet}
    assert plain_cross_site(ME, records) == PlainCrossSite(count=2, sites=("b", "c"))
    skipped = [IPv4Network("10.244.4.0/24"), IPv4Network("10.244.4.0/24")]
    assert plain_cross_site(ME, records, skipped) == PlainCrossSite(count=1, sites=("b",))


def test_sites_are_capped_and_quoted() -> None:
    long_site = "x" * 10_000
    peers = [rec(n, f"s{n:02d}") for n in range(2, 2 + SITES_SHOWN + 3)]
    found = plain_cross_site(ME, leases(*peers, rec(50, long_site)))
    assert found.count == SITES_SHOWN + 4
    assert found.sites == tuple(f"s{n:02d}" for n in range(2, 2 + SITES_SHOWN))
    assert found.more_sites == 4
    line = plain_cross_site(ME, leases(rec(50, long_site))).warning()
    assert len(line) < 600 and "x" * 100 not in line


def test_warning_says_what_is_exposed_and_what_fixes_it() -> None:
    line = plain_cross_site(ME, leases(rec(2, "b"), rec(3, "c"))).warning()
    assert line.startswith("2 peer(s) in other sites ('b', 'c') are reached over plain VXLAN")
    assert "neither encrypted nor authenticated" in line
    assert "overlayctl network init --network <network> --backend vxlan+wireguard --force" in line
    assert "\n" not in line


def test_agrees_with_the_planner_whatever_is_skipped() -> None:
    """The count is exactly the programmed peers of another site, for random inputs."""
    rng = random.Random(9)
    for _ in range(50):
        peers = [
            rec(n, rng.choice("abc"), vni=rng.choice((1, 1, 1, 2)), subnet=rng.choice((n, n, 1)))
            for n in range(2, rng.randrange(3, 30))
        ]
        records = {p.subnet: p for p in peers} | {ME.subnet: ME}
        plan = Planner().plan(ME, records, network=NETWORK)
        expected = sum(records[s].site != ME.site for s in plan.paths)
        found = plain_cross_site(ME, records, (s for s, _ in plan.skipped))
        assert found.count == expected
        assert found.sites == tuple(sorted({records[s].site for s in plan.paths} - {"a"}))


def test_vxlan_wireguard_never_carries_other_sites_over_vxlan() -> None:
    peers = [rec(n, site, backend=VXLAN_WIREGUARD) for n, site in ((2, "a"), (3, "b"), (4, "c"))]
    me = dataclasses.replace(ME, backend_type=VXLAN_WIREGUARD)
    records = leases(*peers, me=me)
    wg = plan_wireguard(me, records, BackendConfig(type=VXLAN_WIREGUARD), network=NETWORK)
    assert not plain_cross_site(me, wg.vxlan_leases)
    plain = plan_wireguard(ME, leases(*(dataclasses.replace(p, backend_type=VXLAN) for p in peers)),
                           BackendConfig(type=VXLAN), network=NETWORK)  # fmt: skip
    assert plain_cross_site(ME, plain.vxlan_leases).count == 2


# -- the daemon logs it once per state change -----------------------------------------


@pytest.fixture
def warning() -> CrossSiteWarning:
    return CrossSiteWarning()  # the reconcile pass's (overlayd/agent/reconcile.py)


def test_daemon_warns_once_per_run_and_again_only_after_it_stopped(
    warning: CrossSiteWarning, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="overlayd")
    in_site, cross = leases(rec(2, "a")), leases(rec(2, "a"), rec(3, "b"))
    for records in (in_site, cross, cross, leases(rec(2, "a"), rec(3, "b"), rec(4, "c")), cross):
        warning.update(ME, records, ())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "plain VXLAN" in warnings[0].getMessage()
    caplog.clear()
    warning.update(ME, cross, ((IPv4Network("10.244.3.0/24"), "VNI differs"),))
    warning.update(ME, in_site, ())
    assert [r.getMessage() for r in caplog.records] == [
        "no peer of another site is reached over plain VXLAN any more"
    ]
    caplog.clear()
    warning.update(ME, cross, ())
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
