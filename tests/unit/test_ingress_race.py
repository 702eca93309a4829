"""The ingress planner and a lease deleted while the daemon wrote the kernel.

The daemon's lease map is live: between planning the VXLAN entries and syncing the ingress
filter it awaits the kernel, and the watch may drop a lease meanwhile. Under lease churn
(tests/security/test_own_lease.py) that was a KeyError that ended the daemon.
"""

from __future__ import annotations

from overlayd.planning.ingress import IngressPlanner
from tests.unit.test_ingress import DEV, ME, PORT, paths_of, peer


def test_a_lease_gone_from_the_map_but_not_from_the_paths_is_skipped() -> None:
    leases = {p.subnet: p for p in (peer(1), peer(2), peer(3))}
    paths = paths_of(ME, leases)
    planner = IngressPlanner()
    planner.plan(PORT, DEV, leases, paths)
    gone = peer(2).subnet
    del leases[gone]  # what the watch did while the kernel was being written
    out = planner.update(PORT, DEV, leases, paths, {gone})
    assert out is not None and gone not in out[0].peers
    full, _ = planner.plan(PORT, DEV, leases, paths)
    assert gone not in full.peers and len(full.peers) == 2
