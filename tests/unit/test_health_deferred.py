"""The status port bound at start, served later (overlayd/agent/status.py ``listen``,
``serve_after``): the daemon pays for aiohttp after its first reconcile pass, a taken port
still fails at once, and a client that comes early is answered once the port serves."""

from __future__ import annotations

import asyncio

import pytest

from overlayd.agent.status import HealthServer
from overlayd.agent.status_listen import LOOPBACK
from overlayd.values.errors import ConfigError

HANDLERS = {"/healthz": lambda: (200, {"status": "ok"})}
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


async def ask(port: int) -> bytes:
    """One request; the whole answer (the server closes the connection)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


def test_an_early_client_is_answered_once_the_port_serves() -> None:
    async def body() -> tuple[bool, bytes]:
        server = HealthServer(LOOPBACK, 0, HANDLERS)
        server.listen()
        port = server.bound[0][1]
        ready = asyncio.Event()
        serving = asyncio.create_task(server.serve_after(ready, 60))
        early = asyncio.create_task(ask(port))
        await asyncio.sleep(0.2)
        waiting = not early.done()  # in the backlog: nobody answers before ``ready``
        ready.set()
        await serving
        answer = await early
        await server.close()
        return waiting, answer

    waiting, answer = asyncio.run(body())
    assert waiting
    assert answer.startswith(b"HTTP/1.1 200")


def test_served_after_at_most_the_deferral_when_never_ready() -> None:
    async def body() -> bytes:
        server = HealthServer(LOOPBACK, 0, HANDLERS)
        server.listen()
        await server.serve_after(asyncio.Event(), 0.01)
        answer = await ask(server.bound[0][1])
        await server.close()
        return answer

    assert asyncio.run(body()).startswith(b"HTTP/1.1 200")


def test_a_taken_port_fails_at_listen_before_anything_is_served() -> None:
    async def body() -> None:
        first = HealthServer(LOOPBACK, 0, HANDLERS)
        first.listen()
        second = HealthServer(LOOPBACK, first.bound[0][1], HANDLERS)
        try:
            with pytest.raises(ConfigError, match="cannot listen on health port"):
                second.listen()
            assert second.bound == []
        finally:
            await first.close()

    asyncio.run(body())


def test_close_before_serving_releases_the_port() -> None:
    async def body() -> None:
        server = HealthServer(LOOPBACK, 0, HANDLERS)
        server.listen()
        port = server.bound[0][1]
        await server.close()
        again = HealthServer(LOOPBACK, port, HANDLERS)
        again.listen()  # the port is free again
        await again.close()

    asyncio.run(body())
