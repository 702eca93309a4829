"""What every ``overlayctl`` command works with: click's context object (``ctx.obj``).

The store comes from one factory, so tests run the real commands against an in-memory
store: ``CliRunner().invoke(main, args, obj=CtlContext(store_factory=lambda _: mem))``.
No global state: whatever is not passed in is the real thing (etcd, the wall clock).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import click

from overlayd.store.api import Store
from overlayd.store.etcd import EtcdSettings, EtcdStore

T = TypeVar("T")
StoreFactory = Callable[[EtcdSettings], Store]


@dataclass(frozen=True)
class CtlContext:
    """How to reach the store and what time it is; ``settings`` come from the flags."""

    store_factory: StoreFactory = EtcdStore
    clock: Callable[[], float] = time.time  # wall clock: daemons report wall-clock times
    settings: EtcdSettings = field(default_factory=EtcdSettings)


def run_with_store(ctx: click.Context, fn: Callable[[Store], Awaitable[T]]) -> T:
    """Open the store, run ``fn`` with it, close it; one event loop per command."""
    env = ctx.find_object(CtlContext)
    assert env is not None, "overlayctl's group sets ctx.obj"

    async def go() -> T:
        store = env.store_factory(env.settings)
        await store.connect()
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(go())
