"""Issue 12's WireGuard start-up bug: a pair whose path probes have verified must ping at
once, not after WireGuard's 5 s handshake retry.

A peer with no public address (the bare host publishes only the address on its
interface) gets no WireGuard endpoint until probes verify that address; traffic sent to it
before that makes WireGuard try a handshake with no endpoint, which it then holds off for
its 5 s rekey timeout. Each sample is a fresh multi-cloud world: the daemons of a1, b1 and
the bare host start, and from the moment both ends of a pair list the pair's path as
verified, the pair must ping within ``BUDGET``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from tests.daemons import OverlaydProc, init_network, running, wait_until
from tests.lab.world import build_multicloud_world, destroy, ping

pytestmark = pytest.mark.root

STARTS = 10
BUDGET = 1.0  # seconds from "both ends verified" to the first answered ping
PAIRS = (("a1", "bare"), ("b1", "bare"), ("a1", "b1"))


def verified(src: OverlaydProc, dst: OverlaydProc) -> bool:
    entry = src.peers().get(dst.node)
    return entry is not None and entry.get("address") in entry.get("verified", [])


def both_verified(a: OverlaydProc, b: OverlaydProc) -> bool:
    return verified(a, b) and verified(b, a)


def answered_within(src: OverlaydProc, dst: OverlaydProc, budget: float) -> float | None:
    """Seconds until ``dst``'s overlay address answers a ping from ``src`` (None: not
    within ``budget``), pinging every 50 ms with a 100 ms wait each."""
    t0 = time.monotonic()
    while (took := time.monotonic() - t0) < budget:
        if ping(src.host.ns, dst.overlay_ip(), count=1, timeout=0.1).ok:
            return took
        time.sleep(0.05)
    return None


def test_a_verified_pair_pings_within_a_second(
    prefix_factory: Callable[[], str], tmp_path: Path
) -> None:
    late: list[str] = []
    for start in range(STARTS):
        world = build_multicloud_world(prefix_factory(), workdir=tmp_path / f"w{start}")
        try:
            init_network(world, "wireguard")
            with running(world, ["a1", "b1", "bare"]) as d:
                # traffic before the paths verify: what makes WireGuard try a handshake
                # towards a peer it has no endpoint for
                for src, dst in PAIRS:
                    ping(d[src].host.ns, d[dst].overlay_ip(), count=1, timeout=0.1)
                for src, dst in PAIRS:
                    a, b = d[src], d[dst]
                    wait_until(partial(both_verified, a, b), 15, f"{src}<->{dst} verified")
                    took = answered_within(a, b, BUDGET)
                    if took is None:
                        late.append(f"start {start}: {src} -> {dst} not within {BUDGET} s")
        finally:
            destroy(world)
    assert not late, late
