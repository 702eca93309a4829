"""Property: the incremental planning path equals a full plan (overlayd/planning/node.py).

Over random sequences of lease events (join, change, leave; other sites, shared VTEP MACs,
records the scope check refuses), ``plan_node(..., memo=memo, changed={subnet})`` after each
event must give what a fresh ``plan_node`` of the same records gives.
"""

from __future__ import annotations

from ipaddress import IPv4Network

from hypothesis import given, settings
from hypothesis import strategies as st

from overlayd.planning.node import NodePlan, PlanMemo, plan_node
from overlayd.values.lease import LeaseRecord
from tests.builders import config, node_lease

CFG = config(Network="10.244.0.0/16", Backend={"Type": "vxlan"})
ME = node_lease(1, "192.0.2.1", private_ips=("10.0.0.1",), site="a")

# (peer n, variant): variant None deletes the peer's lease
Event = tuple[int, int | None]
events = st.lists(
    st.tuples(st.integers(2, 9), st.one_of(st.none(), st.integers(0, 5))), max_size=30
)


def peer(n: int, variant: int) -> LeaseRecord:
    """Peer ``n`` in one of a few shapes the planner treats differently."""
    site = "a" if variant % 2 == 0 else "b"  # in-site: private address; else public
    public = f"198.51.100.{n + 50 * (variant // 2 % 2)}"
    if variant == 5:  # an address inside the overlay network: refused by the scope check
        public = f"10.244.200.{n}"
    mac_n = 2 if variant == 4 else n  # variant 4 shares peer 2's VTEP MAC
    return node_lease(n, public, private_ips=(f"10.0.0.{n}",), site=site, mac_n=mac_n)


def comparable(plan: NodePlan) -> object:
    return (
        plan.vxlan.state,
        dict(plan.vxlan.paths),
        plan.skipped,
        plan.refused,
        dict(plan.vxlan_leases),
    )


@settings(max_examples=200, deadline=None)
@given(events)
def test_incremental_plan_equals_full_plan(sequence: list[Event]) -> None:
    records: dict[IPv4Network, LeaseRecord] = {ME.subnet: ME}
    memo = PlanMemo()
    plan_node(CFG, ME, records, memo=memo)
    for n, variant in sequence:
        subnet = node_lease(n, "192.0.2.1").subnet
        if variant is None:
            records.pop(subnet, None)
        else:
            records[subnet] = peer(n, variant)
        incremental = plan_node(CFG, ME, records, memo=memo, changed={subnet})
        assert comparable(incremental) == comparable(plan_node(CFG, ME, records))


def test_the_property_exercises_the_patch_path() -> None:
    """A join of an ordinary peer is patched, not planned in full (the property is not
    vacuous)."""
    records: dict[IPv4Network, LeaseRecord] = {ME.subnet: ME}
    memo = PlanMemo()
    plan_node(CFG, ME, records, memo=memo)
    joined = peer(3, 1)
    records[joined.subnet] = joined
    assert plan_node(CFG, ME, records, memo=memo, changed={joined.subnet}).touched is not None
