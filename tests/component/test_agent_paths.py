"""The agent replans one peer when that peer's chosen path changes (no root).

The path keeper is ``FakePaths`` (tests/component/fake_paths.py): the test moves one
peer's path as the prober would after probes; what the daemon reprograms is read from the
fake data plane's log of operations.
"""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from overlayd.values.kernel_state import FdbEntry
from tests.builders import mac
from tests.component.agent_harness import agent, converged, until
from tests.component.fake_dataplane import VXLAN_INDEX, FakeDataPlane
from tests.component.fake_paths import FakePaths

PEERS = 40


def test_a_path_change_replans_one_peer(tmp_path: Path) -> None:
    moved = IPv4Network("10.244.7.0/24")  # peer 7: private 10.0.0.7, public 192.0.2.7
    public = IPv4Address("192.0.2.7")

    async def body() -> None:
        paths, dp = FakePaths(), FakeDataPlane()
        async with agent(tmp_path, peers=PEERS, dp=dp, paths=paths) as a:
            await until(converged(a), "convergence with every peer on its guessed path")
            before = await dp.dump(VXLAN_INDEX)  # a copy: the fake changes its own
            assert len(before.fdbs) == PEERS
            assert before.fdbs[mac(7)] == FdbEntry(mac(7), IPv4Address("10.0.0.7"))
            ops, passes = len(dp.applied), a.daemon.status.reconciles
            paths.recomputed.clear()
            paths.choose(moved, public)

            async def moved_over() -> bool:
                return dp.state(VXLAN_INDEX).fdbs[mac(7)].dst == public

            await until(moved_over, "peer 7's FDB entry on its new path")
            await asyncio.sleep(0.2)  # any further pass the change caused
            assert a.daemon.status.reconciles > passes
            assert paths.recomputed == [frozenset({moved})]  # rechosen alone
            (ifindex, changes), *rest = dp.applied[ops:]
            assert not rest, rest
            assert ifindex == VXLAN_INDEX
            assert changes.set_fdbs == (FdbEntry(mac(7), public),)
            assert len(changes) == 1  # no route, neighbour or delete: nothing of the others
            after = dp.state(VXLAN_INDEX)
            assert after.routes == before.routes and after.neighs == before.neighs
            assert {m: e for m, e in after.fdbs.items() if m != mac(7)} == {
                m: e for m, e in before.fdbs.items() if m != mac(7)
            }

    asyncio.run(body())
