"""What the store adapter counts for ``/metrics``: failed requests (an etcd nobody runs on
127.0.0.1) and reconnects of the watch (a Watch call that fails transiently, then not)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from overlayd.store.etcd import EtcdSettings, EtcdStore
from overlayd.store.etcd_watch import WatchRequests, watch_stream
from overlayd.values.errors import StoreError
from tests.lab.etcd import free_ports


def test_failed_requests_are_counted() -> None:
    async def body() -> tuple[int, int]:
        (port,) = free_ports(1)  # nothing listens there
        store = EtcdStore(EtcdSettings(endpoints=(f"127.0.0.1:{port}",)))
        await store.connect()
        try:
            before = store.counters.errors
            for _ in range(2):
                with pytest.raises(StoreError):
                    await store.get_config()
            return before, store.counters.errors
        finally:
            await store.close()

    assert asyncio.run(body()) == (0, 2)


class Transient(Exception):
    """An error the watch reconnects after."""


@dataclass
class Call:
    """A Watch call: fails with ``Transient`` or yields ``responses`` and ends."""

    fails: bool
    responses: tuple[Any, ...] = ()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        if self.fails:
            raise Transient("member gone")
        for r in self.responses:
            yield r

    def cancel(self) -> bool:
        return True


@dataclass
class Response:
    events: tuple[Any, ...] = ()


@pytest.mark.parametrize("failures", [0, 1, 3])
def test_watch_reconnects_are_counted(failures: int) -> None:
    calls = [Call(fails=True) for _ in range(failures)] + [Call(False, (Response(),))]
    reconnects: list[int] = []

    def open_call(_requests: WatchRequests) -> Call:
        return calls.pop(0)

    async def body() -> int:
        stream = watch_stream(
            lambda revision: revision, open_call, lambda e: isinstance(e, Transient), 1,
            lambda: reconnects.append(1),
        )  # fmt: skip
        return len([r async for r in stream])

    assert asyncio.run(body()) == 1
    assert len(reconnects) == failures


def test_an_error_that_is_not_transient_is_raised_not_counted() -> None:
    reconnects: list[int] = []

    def open_call(_requests: WatchRequests) -> Call:
        return Call(fails=True)

    async def body() -> None:
        stream = watch_stream(
            lambda r: r, open_call, lambda e: False, 1, lambda: reconnects.append(1)
        )
        async for _ in stream:
            pass

    with pytest.raises(Transient):
        asyncio.run(body())
    assert reconnects == []
