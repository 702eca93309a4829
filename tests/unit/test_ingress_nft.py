"""The ingress filter's nftables side: scripts, the table keeper (with an in-memory nft),
and (as root, in a namespace of our own) that nft takes the table and its updates."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

import pytest

from overlayd.dataplane.ingress_nft import (
    FAMILY,
    TABLE,
    IngressFilter,
    IngressTable,
    delta_script,
    ingress_ruleset,
)
from overlayd.planning.ingress import IngressDelta, IngressPlanner, IngressPolicy, VxlanPeers
from overlayd.values.errors import KernelError
from overlayd.values.kernel_state import MacAddress
from overlayd.values.lease import LeaseRecord
from overlayd.values.paths import PeerPath
from tests.builders import guessed_paths, node_lease
from tests.lab.netns import Namespace, create_namespace

N = IPv4Network
MAC1, MAC2 = MacAddress("02:00:00:00:00:01"), MacAddress("02:00:00:00:00:02")


def peer(n: int) -> LeaseRecord:
    return node_lease(
        n,
        f"10.0.0.{n}",
        node=f"h{n}",
        private_ips=(f"10.0.0.{n}",),
        public_ips=(f"198.51.100.{n}",),
    )


ME = peer(200)


def vxlan_peers(*ns: int, changed: set[N] | None = None) -> VxlanPeers:
    leases = {r.subnet: r for r in map(peer, ns)}
    paths: dict[N, PeerPath] = guessed_paths(ME, leases)
    return VxlanPeers(leases, paths, changed)


def test_ruleset_text() -> None:
    leases = vxlan_peers(2, 1)
    policy, _ = IngressPlanner().plan(4789, "overlay.7", leases.leases, leases.paths)
    text = ingress_ruleset(policy)
    lines = [line.strip() for line in text.strip().splitlines()]
    # replaced as a whole, in one transaction; our table only
    assert lines[:3] == [f"table {FAMILY} {TABLE} {{}}", f"delete table {FAMILY} {TABLE}",
                         f"table {FAMILY} {TABLE} {{"]  # fmt: skip
    assert "type filter hook prerouting priority raw; policy accept;" in lines
    assert (
        "udp dport 4789 ip saddr != @peers fib daddr type { local, broadcast, multicast } "
        "counter drop" in lines
    )
    assert 'iifname "overlay.7" meta protocol ip ether saddr . ip saddr != @inner counter drop' in (
        lines
    )
    assert 'iifname "overlay.7" meta protocol ip6 counter drop' in lines
    assert "elements = { 10.0.0.1, 10.0.0.2, 198.51.100.1, 198.51.100.2 }" in lines
    assert (
        "elements = { 02:00:00:00:00:01 . 10.244.1.0/24, 02:00:00:00:00:02 . 10.244.2.0/24 }"
        in lines
    )
    assert text.count("{") == text.count("}")


def test_ruleset_with_empty_sets_has_no_elements() -> None:
    text = ingress_ruleset(IngressPolicy(8472, "overlay.1"))
    assert "elements" not in text and "type ether_addr . ipv4_addr" in text


def test_delta_script_deletes_first() -> None:
    delta = IngressDelta(
        add_sources=(IPv4Address("10.0.0.9"),),
        del_sources=(IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2")),
        add_pairs=((MAC1, N("10.244.9.0/24")),),
        del_pairs=((MAC2, N("10.244.2.0/24")),),
    )
    assert delta_script(delta).splitlines() == [
        f"delete element {FAMILY} {TABLE} peers {{ 10.0.0.1, 10.0.0.2 }}",
        f"delete element {FAMILY} {TABLE} inner {{ 02:00:00:00:00:02 . 10.244.2.0/24 }}",
        f"add element {FAMILY} {TABLE} peers {{ 10.0.0.9 }}",
        f"add element {FAMILY} {TABLE} inner {{ 02:00:00:00:00:01 . 10.244.9.0/24 }}",
    ]
    assert delta_script(IngressDelta()) == ""


class FakeNft:
    """An in-memory nft: remembers scripts, lists the table while one was written."""

    def __init__(self) -> None:
        self.scripts: list[str] = []
        self.listing: str | None = None
        self.fail = False

    def run(self, script: str) -> None:
        if self.fail:
            raise KernelError("nft failed: Error: Could not process rule")
        self.scripts.append(script)
        if script.startswith(f"table {FAMILY} {TABLE} {{}}\ndelete table"):
            gone = script.count("\n") == 2  # delete_table only
            self.listing = (
                None if gone else f"table {FAMILY} {TABLE} {{ counter packets 0 bytes 0 }}"
            )

    def read(self, family: str, name: str) -> str | None:
        assert (family, name) == (FAMILY, TABLE)
        return self.listing


def step(table: IngressTable, planner: IngressPlanner, peers: VxlanPeers) -> str | None:
    """Plan ``peers`` and apply the result, as ``IngressFilter.sync`` does."""
    base = planner.policy
    policy, delta = planner.plan(8472, "overlay.1", peers.leases, peers.paths)
    return table.apply(policy, delta, base)


def test_table_writes_whole_then_deltas_then_whole_after_failure() -> None:
    nft = FakeNft()
    table = IngressTable(nft.run, nft.read)
    planner = IngressPlanner()
    one = vxlan_peers(1)
    done = step(table, planner, one)
    assert done == "written: 2 sources, 1 inner prefixes" and table.known
    assert "delete table" in nft.scripts[-1]
    two = vxlan_peers(1, 2)
    done = step(table, planner, two)
    assert done == "+2/-0 sources, +1/-0 inner prefixes"
    assert nft.scripts[-1].startswith("add element")
    assert step(table, planner, two) is None
    count = len(nft.scripts)
    nft.fail = True
    with pytest.raises(KernelError):
        step(table, planner, one)
    assert not table.known
    nft.fail = False
    done = step(table, planner, one)
    assert done is not None and done.startswith("written") and len(nft.scripts) == count + 1


def test_verify_finds_a_missing_or_changed_table() -> None:
    nft = FakeNft()
    table = IngressTable(nft.run, nft.read)
    assert not table.verify()  # nothing written yet: unknown
    one, two, planner = vxlan_peers(1), vxlan_peers(1, 2), IngressPlanner()
    step(table, planner, one)
    nft.listing = "table inet overlayd_ingress { counter packets 12345 bytes 999 }"  # traffic only
    assert table.verify()
    nft.listing = "table inet overlayd_ingress { }"  # someone flushed our chain
    assert not table.verify() and not table.known
    assert (step(table, planner, two) or "").startswith("written")  # whole, not the delta
    nft.listing = None  # deleted by hand
    assert not table.verify()


def test_a_delta_from_another_base_than_the_table_is_not_applied() -> None:
    nft = FakeNft()
    table, planner = IngressTable(nft.run, nft.read), IngressPlanner()
    step(table, planner, vxlan_peers(1))
    planner.plan(8472, "overlay.1", vxlan_peers(1, 2).leases, vxlan_peers(1, 2).paths)  # lost
    assert (step(table, planner, vxlan_peers(1, 2, 3)) or "").startswith("written")
    assert "10.0.0.2" in nft.scripts[-1] and "10.0.0.3" in nft.scripts[-1]


def test_remove_once() -> None:
    nft = FakeNft()
    table = IngressTable(nft.run, nft.read)
    assert table.remove() and not table.remove()
    assert nft.scripts == [f"table {FAMILY} {TABLE} {{}}\ndelete table {FAMILY} {TABLE}\n"]


def test_filter_uses_incremental_updates_and_reads_back_when_stale() -> None:
    nft = FakeNft()
    filt = IngressFilter(IngressTable(nft.run, nft.read))

    async def go() -> None:
        await filt.sync(8472, "overlay.1", vxlan_peers(1, 2))
        assert "delete table" in nft.scripts[-1]
        await filt.sync(8472, "overlay.1", vxlan_peers(1, 2, 3, changed={peer(3).subnet}))
        assert nft.scripts[-1].startswith("add element")
        filt.mark_stale()
        nft.listing = None
        await filt.sync(8472, "overlay.1", vxlan_peers(1, 2, 3, changed=set()))
        assert "delete table" in nft.scripts[-1]  # rewritten whole
        nft.fail = True
        with pytest.raises(KernelError, match="VXLAN ingress filter: nft failed"):
            await filt.sync(8472, "overlay.1", vxlan_peers(1, changed={peer(2).subnet}))

    asyncio.run(go())


# -- root: nft takes it, in a namespace of our own ------------------------------------


@pytest.fixture
def netns(prefix: str) -> Iterator[Namespace]:
    yield create_namespace(f"{prefix}nft")


def _elements(ns: Namespace, name: str) -> set[str]:
    return ns.nft_set(FAMILY, TABLE, name)


@pytest.mark.root
def test_nft_takes_table_and_updates(netns: Namespace) -> None:
    def run(script: str) -> None:
        proc = netns.run(["nft", "-f", "-"], check=False, input=script)
        if proc.returncode:
            raise KernelError(proc.stderr)

    def read(family: str, name: str) -> str | None:
        proc = netns.run(["nft", "--terse", "list", "table", family, name], check=False)
        return proc.stdout if proc.returncode == 0 else None

    table, planner = IngressTable(run, read), IngressPlanner()
    many = vxlan_peers(*range(1, 60))
    step(table, planner, many)
    assert len(_elements(netns, "peers")) == 2 * 59 and len(_elements(netns, "inner")) == 59
    assert table.verify()
    fewer = vxlan_peers(*range(2, 61))
    assert step(table, planner, fewer) == ("+2/-2 sources, +1/-1 inner prefixes")
    inner = _elements(netns, "inner")
    assert "02:00:00:00:00:3c . 10.244.60.0/24" in inner
    assert not any(e.endswith("10.244.1.0/24") for e in inner)
    assert table.verify()
    netns.run(["nft", "flush", "chain", FAMILY, TABLE, "prerouting"])  # tampered with
    assert not table.verify()
    step(table, planner, fewer)
    assert table.verify() and len(_elements(netns, "inner")) == 59
    tables = netns.run(["nft", "list", "tables"]).stdout.split()
    assert tables == ["table", FAMILY, TABLE]  # nothing else in the namespace
    assert table.remove()
    assert netns.run(["nft", "list", "tables"]).stdout.strip() == ""
