"""The etcd watch stream: a listing, then the changes after it, across reconnects and
compactions.

``watch_range`` lists a key range and follows it from the listing's revision; when etcd
says events were lost (compacted, or the watch canceled) it lists again. ``watch_stream``
is one logical watch over as many Watch calls as it takes: a transient error reconnects
after a backoff, from the revision after the last event seen.

The gRPC binding stays in overlayd/store/etcd.py, the only module importing the etcd
client and grpc: it passes in how to open a Watch call and which errors are transient.
Responses are the client's protobuf messages, read by field name only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

from overlayd.runtime.retry import Backoff, Retry
from overlayd.store.api import EventKind

T = TypeVar("T")
WATCH_BACKOFF = 0.25  # seconds before a watch reconnects after a transient error; doubles
WATCH_BACKOFF_MAX = 2.0
DELETE = 1  # etcd's mvccpb.Event.EventType DELETE (PUT is 0)


class WatchCall(Protocol):
    """One gRPC Watch call: its responses, and a way to end it."""

    def __aiter__(self) -> AsyncIterator[Any]: ...

    def cancel(self) -> bool: ...


class WatchRequests:
    """The request side of one etcd Watch call: the create request, then nothing until
    ``close()`` ends it.

    etcd3aio's own watch feeds grpc a generator that waits forever; when the call fails by
    itself (an etcd member died) grpc does not cancel the task consuming it, which is later
    destroyed while pending and its generator closed while running ("Task was destroyed but
    it is pending", "aclose(): asynchronous generator is already running" in the log).
    Ending this iterator lets that task finish.
    """

    def __init__(self, request: Any) -> None:
        self._request: Any = request
        self._closed = asyncio.Event()

    def __aiter__(self) -> WatchRequests:
        return self

    async def __anext__(self) -> Any:
        if self._request is not None:
            request, self._request = self._request, None
            return request
        await self._closed.wait()
        raise StopAsyncIteration

    def close(self) -> None:
        self._closed.set()


async def watch_stream(
    create: Callable[[int], Any],
    open_call: Callable[[WatchRequests], WatchCall],
    transient: Callable[[Exception], bool],
    revision: int,
    reconnected: Callable[[], None] = lambda: None,
) -> AsyncGenerator[Any, None]:
    """Watch responses from ``revision`` on, across reconnects.

    ``create(revision)`` is the Watch call's create request, ``open_call`` opens the call;
    an error ``transient`` says is one reconnects after a backoff (``reconnected`` is told,
    for metrics), any other is raised.
    """
    backoff = Retry(Backoff(first=WATCH_BACKOFF, cap=WATCH_BACKOFF_MAX))
    while True:
        requests = WatchRequests(create(revision))
        call = open_call(requests)
        try:
            async for resp in call:
                for ev in resp.events:
                    revision = max(revision, int(ev.kv.mod_revision) + 1)
                backoff.reset()
                yield resp
            return
        except Exception as exc:
            if not transient(exc):
                raise
        finally:
            requests.close()
            call.cancel()
        reconnected()
        await backoff.pause()


async def watch_range(
    relist: Callable[[], Awaitable[tuple[int, T]]],
    stream: Callable[[int], AsyncGenerator[Any, None]],
    first: tuple[int, T] | None = None,
) -> AsyncGenerator[tuple[T | None, list[tuple[EventKind, Any]]], None]:
    """List (``relist`` gives revision and listing), then follow ``stream(revision + 1)``;
    list again when events were lost. Yields (listing, []) then (None, events of the
    client's key-values).

    ``first`` (revision, listing) stands in for the first listing, if the caller has one.
    """
    while True:
        revision, listing = first or await relist()
        first = None
        yield listing, []
        responses = stream(revision + 1)
        async with contextlib.aclosing(responses):
            async for resp in responses:
                if resp.compact_revision > 0 or resp.canceled:
                    break  # events were lost: list again
                events = [
                    (EventKind.DELETE if ev.type == DELETE else EventKind.PUT, ev.kv)
                    for ev in resp.events
                ]
                if events:
                    yield None, events
