"""Running ``overlayctl`` in-process against an in-memory store (click's CliRunner)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from click.testing import CliRunner, Result

from overlayd.cli.context import CtlContext, StoreFactory
from overlayd.cli.ctl import main
from overlayd.store.memory import MemStore
from overlayd.store.memory_kv import ManualClock
from overlayd.values.lease import LeaseRecord

T = TypeVar("T")
NOW = 1_800_000_000.0  # the wall clock overlayctl sees ("probed 2.0s ago")


def sync(coro: Awaitable[T]) -> T:
    """Run one store call from a (synchronous) test."""

    async def go() -> T:
        return await coro

    return asyncio.run(go())


class Ctl:
    """``ctl("leases", "list")`` runs the command against ``store`` and checks its exit code."""

    def __init__(self, store: MemStore | None = None) -> None:
        self.clock = ManualClock()
        self.store = store if store is not None else MemStore(clock=self.clock)
        self.factory: StoreFactory = lambda _settings: self.store

    def __call__(self, *args: str, code: int = 0) -> Result:
        obj = CtlContext(store_factory=self.factory, clock=lambda: NOW)
        result = CliRunner().invoke(main, list(args), obj=obj)
        assert result.exit_code == code, (
            f"exit {result.exit_code} (wanted {code})\nstdout: {result.stdout}\n"
            f"stderr: {result.stderr}\nexception: {result.exception!r}"
        )
        if code != 0:
            # our errors exit on purpose: never an exception escaping as a traceback
            assert isinstance(result.exception, SystemExit), result.exception
            assert "Traceback" not in result.output
        return result

    def lease(self, record: LeaseRecord, ttl: int = 60) -> int:
        """Publish ``record`` as its daemon would: bound to an etcd lease of ``ttl``."""
        lease_id = sync(self.store.grant(ttl))
        assert sync(self.store.create_lease(record, lease_id))
        return lease_id

    def init(self, *args: str) -> None:
        self("network", "init", "--network", "10.244.0.0/16", *args)
