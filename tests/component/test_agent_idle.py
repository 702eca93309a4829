"""An idle daemon writes nothing: the resync tick reads everything back and applies only a
difference (no root).

The agent runs ``vxlan+wireguard`` with ``--ip-masq`` against the fake data plane, which
names every call that changed something (``FakeDataPlane.writes``) and counts read-backs;
the fake host records every nft script. Paths are ``FakePaths``' (no probes), so nothing
but the resync timer wakes the daemon once it has converged.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from overlayd.store.memory import MemStore
from overlayd.values.keys import PublicKey
from overlayd.values.lease import LeaseRecord
from tests.builders import config, wg_key
from tests.component.agent_harness import NETWORK, Agent, add_peer, agent, until
from tests.component.fake_dataplane import VXLAN_INDEX, WIREGUARD_INDEX, FakeDataPlane
from tests.component.fake_paths import FakePaths

RESYNC = 0.05  # seconds: many resyncs in a short test


async def peers(store: MemStore, count: int) -> list[LeaseRecord]:
    """``count`` peers, every other one in site ``b`` (a WireGuard peer of ours)."""
    out = []
    for n in range(2, 2 + count):
        site = "b" if n % 2 else "default"
        fields = {"backend_type": "vxlan+wireguard", "wireguard_port": 51820}
        out.append(await add_peer(store, n, site=site, public_key=wg_key(n), **fields))
    return out


def converged(a: Agent, records: list[LeaseRecord]) -> bool:
    remote = {PublicKey.from_base64(r.public_key or "") for r in records if r.site == "b"}
    local = [r.subnet for r in records if r.site == "default"]
    vxlan = a.dp.state(VXLAN_INDEX).routes
    return (
        a.daemon.status.snapshot_loaded
        and set(a.dp.wg_peers) == remote
        and all(s in vxlan for s in local)
        and len(a.dp.state(WIREGUARD_INDEX).routes) == len(remote)
    )


async def resyncs(a: Agent, count: int) -> None:
    """Wait until the daemon has read its devices back ``count`` more times."""
    target = a.dp.dumps + 2 * count  # two devices

    async def done() -> bool:
        return a.dp.dumps >= target

    await until(done, f"{count} resyncs")


def test_idle_resyncs_write_nothing(tmp_path: Path) -> None:
    async def body() -> None:
        store, dp = MemStore(), FakeDataPlane()
        cfg = config(Network=NETWORK, Backend={"Type": "vxlan+wireguard"})
        await store.put_config(cfg)
        records = await peers(store, 8)
        async with agent(
            tmp_path, store=store, dp=dp, cfg=cfg, paths=FakePaths(), ip_masq=True,
            resync_interval=RESYNC,
        ) as a:  # fmt: skip

            async def ready() -> bool:
                return converged(a, records)

            await until(ready, "convergence")
            await resyncs(a, 2)  # whatever the start-up still had to do
            writes, scripts = list(dp.writes), list(a.host.nft)
            passes = a.daemon.status.reconciles
            await resyncs(a, 10)
            assert a.daemon.status.reconciles > passes  # the passes ran
            assert dp.writes == writes  # and changed nothing
            assert a.host.nft == scripts  # nor wrote any nft table

    asyncio.run(body())


def test_a_resync_applies_only_the_difference(tmp_path: Path) -> None:
    async def body() -> None:
        store, dp = MemStore(), FakeDataPlane()
        async with agent(
            tmp_path, peers=6, store=store, dp=dp, paths=FakePaths(), resync_interval=RESYNC
        ) as a:

            async def ready() -> bool:
                return a.daemon.status.snapshot_loaded and len(dp.state().routes) == 6

            await until(ready, "convergence")
            await resyncs(a, 2)
            ops = len(dp.applied)
            # someone removes one route behind the daemon's back (no notification)
            gone = sorted(dp.state().routes)[0]
            del dp.state().routes[gone]

            async def restored() -> bool:
                return gone in dp.state().routes

            await until(restored, "the route restored by a resync")
            await resyncs(a, 3)
            (ifindex, changes), *rest = dp.applied[ops:]
            assert not rest, rest
            assert ifindex == VXLAN_INDEX
            assert [r.dst for r in changes.set_routes] == [gone]
            assert len(changes) == 1

    asyncio.run(body())
