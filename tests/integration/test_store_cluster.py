"""The store against a 3-member etcd cluster on loopback whose members die one by one.

etcd3aio's own watch left a task consuming its request generator pending when a member
died ("Task was destroyed but it is pending", "aclose(): asynchronous generator is already
running"); our watch ends its request stream. The watches go on delivering events.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import shutil
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from overlayd.store.etcd import EtcdSettings, EtcdStore
from tests.lab.etcd import ETCD, EtcdCluster, EtcdServer
from tests.lab.tools.lease_churn import synthetic

pytestmark = pytest.mark.skipif(not Path(ETCD).exists(), reason="needs etcd")


def restart(member: EtcdServer) -> None:
    """Start a killed member again and wait until it serves (blocking: run it in a thread)."""
    member.start().wait_healthy(timeout=30)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    with EtcdCluster(tmp_path / "cluster", 3) as c:
        yield c
    for m in c.members:
        shutil.rmtree(m.data_dir, ignore_errors=True)


def test_member_deaths_leak_no_watch_tasks(
    cluster: EtcdCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")
    seen: list[IPv4Network] = []

    async def body() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(None)  # the default handler logs to "asyncio"
        store = EtcdStore(EtcdSettings(endpoints=tuple(cluster.endpoints.split(","))))
        await store.connect()

        async def watch() -> None:
            async for batch in store.watch_leases():
                seen.extend(e.lease.subnet for e in batch.events)

        async def gateways() -> None:
            async for _ in store.watch_gateways():
                pass

        tasks = [asyncio.create_task(watch()), asyncio.create_task(gateways())]
        try:
            await asyncio.sleep(0.5)
            for n, member in enumerate(cluster.members):
                await asyncio.to_thread(member.kill)
                await asyncio.sleep(2.0)  # the watch on it fails over
                subnet = IPv4Network(f"10.244.{n + 1}.0/24")
                assert await store.create_lease(synthetic(subnet, n, "lab"), 0)
                for _ in range(100):
                    if subnet in seen:
                        break
                    await asyncio.sleep(0.05)
                assert subnet in seen, f"no event for {subnet} with {member.name} down"
                await asyncio.to_thread(restart, member)
                gc.collect()  # what the daemon's collector does sooner or later
                await asyncio.sleep(0.1)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await store.close()
        gc.collect()
        await asyncio.sleep(0.1)

    asyncio.run(asyncio.wait_for(body(), 120))
    leaks = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert leaks == [], leaks
