"""The daemon's reconcile loop outlives failed passes (no root, no kernel, no etcd)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from overlayd.agent.daemon import Daemon
from overlayd.agent.path_keeper import PathKeeper
from overlayd.disk.node_key import NodeKey
from overlayd.disk.state_dir import StateDir
from overlayd.probe.settings import ProbeConfig
from overlayd.store.memory import MemStore
from overlayd.values.errors import KernelError, WireGuardError
from tests.builders import daemon_options
from tests.component.fake_dataplane import FakeDataPlane


def test_reconcile_loop_retries_after_any_of_our_errors(tmp_path: Path) -> None:
    opts = daemon_options(tmp_path)
    state, key = StateDir(opts.state_dir), NodeKey.load_or_create(opts.state_dir)
    paths = PathKeeper(key, ProbeConfig(port=0))  # never started: no pass of its own runs
    daemon = Daemon(opts, MemStore(), FakeDataPlane(), state, key, paths)
    failures = [WireGuardError("wireguard-go did not come up"), KernelError("netlink refused")]
    passes: list[int] = []

    async def flaky_reconcile() -> None:
        passes.append(len(passes))
        if failures:
            raise failures.pop(0)

    async def run() -> None:
        loop = asyncio.create_task(daemon.reconcile_loop(flaky_reconcile))
        daemon.mark_dirty()
        for _ in range(60):  # each failure waits 1 s before the retry
            if len(passes) >= 3 or loop.done():
                break
            await asyncio.sleep(0.05)
        assert not loop.done(), loop.exception()
        loop.cancel()

    asyncio.run(run())
    assert passes == [0, 1, 2]
    assert daemon.status.last_error is None  # the third pass succeeded
