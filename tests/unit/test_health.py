"""The status port's server on 127.0.0.1 with real sockets (no root): paths, limits, logs."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address, IPv4Network, ip_address
from pathlib import Path
from typing import Any, TypeVar

import pytest

from overlayd.agent.status import Handler, HealthServer, Text
from overlayd.agent.status_guard import Limits
from overlayd.agent.status_listen import LOOPBACK, ListenSpec, exposure, parse_listen
from overlayd.values.errors import ConfigError

T = TypeVar("T")
FAST = Limits(deadline=1.5, log_interval=60)
HANDLERS: dict[str, Handler] = {
    "/healthz": lambda: (200, {"status": "ok"}),
    "/readyz": lambda: (503, {"ready": False}),
    "/status": lambda: (200, {"node": "n1", "peers": 2}),
    "/peers": lambda: (200, {"peers": [{"node": "n2"}]}),
    "/metrics": lambda: (200, Text("overlayd_peers 2\n")),
}


def serve(
    body: Callable[[HealthServer, int], Awaitable[T]],
    limits: Limits = FAST,
    listen: ListenSpec = LOOPBACK,
    handlers: dict[str, Handler] = HANDLERS,
) -> T:
    async def main() -> T:
        server = HealthServer(listen, 0, handlers, limits)
        await server.start()
        try:
            return await body(server, server.bound[0][1])
        finally:
            await server.close()

    return asyncio.run(main())


def get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, str, str]:
    """(status, content type, body) with urllib, as ``overlayctl peers`` reads /peers."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


async def exchange(port: int, raw: bytes, timeout: float = 5.0) -> bytes:
    """Send ``raw``, return everything the server answers before it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    except ConnectionError:
        return b""
    finally:
        writer.close()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


def test_every_path_answers_json_like_before() -> None:
    async def body(_s: HealthServer, port: int) -> dict[str, tuple[int, str, str]]:
        paths = ["/healthz", "/readyz", "/status", "/peers?x=1", "/metrics", "/nope"]
        return {p: await asyncio.to_thread(get, port, p) for p in paths}

    got = serve(body)
    for path, (code, want) in {
        "/healthz": (200, {"status": "ok"}),
        "/readyz": (503, {"ready": False}),
        "/status": (200, {"node": "n1", "peers": 2}),
        "/peers?x=1": (200, {"peers": [{"node": "n2"}]}),
        "/nope": (404, {"error": "no such path /nope"}),
    }.items():
        status, ctype, text = got[path]
        assert (status, ctype, json.loads(text)) == (code, "application/json", want), path
        assert text == json.dumps(want, sort_keys=True, indent=1) + "\n"  # as the old server
    assert got["/metrics"] == (200, "text/plain; charset=utf-8", "overlayd_peers 2\n")


def test_other_methods_get_a_json_405_and_head_works() -> None:
    async def body(_s: HealthServer, port: int) -> tuple[bytes, bytes]:
        post = await exchange(
            port, b"POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
        )
        head = await exchange(port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        return post, head

    post, head = serve(body)
    assert status_of(post) == 405 and post.endswith(b'"method POST not allowed"\n}\n')
    assert status_of(head) == 200 and head.endswith(b"\r\n\r\n")


def test_a_failing_handler_answers_500_and_logs_one_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)

    def broken() -> tuple[int, Any]:
        raise RuntimeError("bug")

    async def body(_s: HealthServer, port: int) -> list[int]:
        return [(await asyncio.to_thread(get, port, "/bug"))[0] for _ in range(5)]

    assert serve(body, handlers={"/bug": broken}) == [500] * 5
    assert len(tracebacks(caplog)) == 1  # our own bug: a traceback, but once per interval


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", id="long-line"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 50 + b"\r\n\r\n", id="tls"),
        pytest.param(b"\x00\xffgarbage \x7f\r\n\r\n", id="garbage"),
        pytest.param(b"GET /healthz HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", id="headers"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nX-A: " + b"b" * 20_000 + b"\r\n\r\n", id="field"),
        pytest.param(b"GET /healthz HTTP/1.1\r\n\r\n", id="no-host"),
    ],
)
def test_malformed_requests_get_400_without_traceback(
    raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def body(_s: HealthServer, port: int) -> tuple[bytes, int]:
        answer = await exchange(port, raw)
        return answer, (await asyncio.to_thread(get, port, "/healthz"))[0]

    answer, after = serve(body)
    assert status_of(answer) == 400
    assert after == 200
    assert not tracebacks(caplog)
    assert not [r for r in caplog.records if r.name.startswith("aiohttp")]


def test_a_hundred_bad_requests_log_one_short_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    oversize = b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n"

    async def body(_s: HealthServer, port: int) -> list[bytes]:
        answers = [
            await exchange(port, oversize if i % 2 else b"\x00junk\r\n\r\n") for i in range(100)
        ]
        return answers

    answers = serve(body)
    assert all(status_of(a) == 400 for a in answers)
    lines = [
        r for r in caplog.records if r.levelno >= logging.INFO and "status port" in r.getMessage()
    ]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert len(lines[0].getMessage()) < 300
    assert not tracebacks(caplog)


def test_normal_requests_log_nothing_per_request(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def body(_s: HealthServer, port: int) -> None:
        for _ in range(20):
            await asyncio.to_thread(get, port, "/healthz")

    serve(body)
    per_request = [
        r for r in caplog.records if r.levelno >= logging.INFO and "listening" not in r.getMessage()
    ]
    assert per_request == []  # aiohttp.access would log 20 lines at INFO


async def loris(port: int, started: asyncio.Event) -> float | None:
    """A slowloris client: a byte every 0.5 s, never done; seconds until the server closed
    it (None: it was still open after 8 s)."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = loop.time()  # after connecting: over the listen backlog a SYN waits 1 s for a retry
    started.set()
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 100

    async def drip() -> None:
        for byte in request:
            if writer.is_closing() or reader.at_eof():
                return
            writer.write(bytes([byte]))
            await asyncio.sleep(0.5)

    dripper = asyncio.create_task(drip())
    try:
        await asyncio.wait_for(reader.read(), 8)
        return loop.time() - t0
    except ConnectionError:
        return loop.time() - t0
    except TimeoutError:
        return None
    finally:
        dripper.cancel()
        writer.close()


def test_slowloris_is_cut_at_the_deadline_and_capped_while_requests_get_through() -> None:
    limits = Limits(deadline=2.0, max_connections=64)

    async def body(server: HealthServer, port: int) -> tuple[list[float | None], list[float], int]:
        events = [asyncio.Event() for _ in range(200)]
        clients = [asyncio.create_task(loris(port, e)) for e in events]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 5)
        await asyncio.sleep(0.2)
        most, waits = server.open_connections, []
        for _ in range(3):  # a real request during the attack is answered at once
            t0 = time.monotonic()
            assert (await asyncio.to_thread(get, port, "/healthz"))[0] == 200
            waits.append(time.monotonic() - t0)
            most = max(most, server.open_connections)
            await asyncio.sleep(0.3)
        return await asyncio.gather(*clients), waits, most

    lifetimes, waits, most = serve(body, limits)
    assert most <= 64
    late = [t for t in lifetimes if t is None or t > limits.deadline + 1.0]
    assert not late, sorted(lifetimes, key=lambda t: 99 if t is None else t)[-10:]
    # over the cap the oldest were closed early: at most 64 lived to their deadline
    assert sum(1 for t in lifetimes if t is not None and t < limits.deadline - 0.2) >= 200 - 64
    assert max(waits) < 1.0, waits


def test_the_deadline_covers_a_body_that_never_comes() -> None:
    async def body(_s: HealthServer, port: int) -> tuple[bytes, float]:
        t0 = time.monotonic()
        answer = await exchange(
            port, b"POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nab"
        )
        return answer, time.monotonic() - t0

    answer, took = serve(body)
    assert took < FAST.deadline + 1.0
    assert answer == b"" or status_of(answer) == 405


def test_a_port_in_use_is_a_config_error() -> None:
    async def body(server: HealthServer, port: int) -> None:
        other = HealthServer(LOOPBACK, port, HANDLERS)
        with pytest.raises(ConfigError, match=r"cannot listen on health port 127\.0\.0\.1"):
            await other.start()

    serve(body)


def test_overlay_listener_follows_the_overlay_address(caplog: pytest.LogCaptureFixture) -> None:
    """127.0.0.2 and .3 stand in for overlay addresses (every 127/8 address is local)."""
    caplog.set_level(logging.INFO)
    net = IPv4Network("10.244.0.0/16")

    async def body(server: HealthServer, _port: int) -> list[Any]:
        await server.follow_overlay(IPv4Address("127.0.0.2"), net)
        first = [a for a, _ in server.bound]
        port2 = server.bound_port(IPv4Address("127.0.0.2"))
        ok2 = (await asyncio.to_thread(get, port2, "/healthz", "127.0.0.2"))[0]
        await server.follow_overlay(IPv4Address("127.0.0.3"), net)
        port3 = server.bound_port(IPv4Address("127.0.0.3"))
        ok3 = (await asyncio.to_thread(get, port3, "/healthz", "127.0.0.3"))[0]
        return [first, ok2, ok3, [a for a, _ in server.bound]]

    first, ok2, ok3, last = serve(body, listen=ListenSpec(overlay=True))
    assert first == [IPv4Address("127.0.0.1"), IPv4Address("127.0.0.2")]
    assert ok2 == ok3 == 200
    assert last == [IPv4Address("127.0.0.1"), IPv4Address("127.0.0.3")]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("overlay network 10.244.0.0/16" in w for w in warnings)


def test_listens_on_ipv4_and_ipv6_loopback() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")

    async def body(server: HealthServer, _port: int) -> list[int]:
        hosts = [(f"[{a}]" if a.version == 6 else str(a), p) for a, p in server.bound]
        return [(await asyncio.to_thread(get, p, "/healthz", h))[0] for h, p in hosts]

    listen = parse_listen(["::1", "127.0.0.1"])
    assert serve(body, listen=listen) == [200, 200]


def test_without_overlay_in_the_spec_the_overlay_address_is_not_bound() -> None:
    async def body(server: HealthServer, _port: int) -> list[Any]:
        await server.follow_overlay(IPv4Address("127.0.0.2"), IPv4Network("10.244.0.0/16"))
        return [a for a, _ in server.bound]

    assert serve(body) == [IPv4Address("127.0.0.1")]


def test_close_leaves_no_task_behind() -> None:
    async def main() -> set[asyncio.Task[Any]]:
        server = HealthServer(LOOPBACK, 0, HANDLERS, FAST)
        await server.start()
        port = server.bound[0][1]
        _r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /healthz HTTP/1.1\r\n")  # half a request, open at close
        await w.drain()
        await asyncio.sleep(0.1)
        await server.close()
        w.close()
        current = asyncio.current_task()
        return {t for t in asyncio.all_tasks() if t is not current}

    assert asyncio.run(main()) == set()


# -- where it listens (pure) ---------------------------------------------------------------


def test_parse_listen() -> None:
    assert parse_listen([]) == LOOPBACK == ListenSpec((IPv4Address("127.0.0.1"),))
    spec = parse_listen(["overlay", "::1", "127.0.0.1", "127.0.0.1"])
    assert spec == ListenSpec((ip_address("127.0.0.1"), ip_address("::1")), overlay=True)
    assert parse_listen(["overlay"]) == ListenSpec((), overlay=True)
    with pytest.raises(ConfigError, match="neither an IP address") as err:
        parse_listen(["localhost"])
    assert err.value.exit_code == 2


def test_binds_add_the_overlay_address_once_known() -> None:
    spec = ListenSpec((IPv4Address("127.0.0.1"),), overlay=True)
    assert spec.binds(None) == (IPv4Address("127.0.0.1"),)
    assert spec.binds(IPv4Address("10.244.3.0")) == (
        IPv4Address("10.244.3.0"),
        IPv4Address("127.0.0.1"),
    )
    assert LOOPBACK.binds(IPv4Address("10.244.3.0")) == (IPv4Address("127.0.0.1"),)


def test_exposure_says_who_can_read_it() -> None:
    assert exposure(ip_address("127.0.0.1")) is None
    assert exposure(ip_address("::1")) is None
    assert "internet" in (exposure(ip_address("0.0.0.0")) or "")
    assert "192.0.2.31" in (exposure(ip_address("192.0.2.31")) or "")
    overlay = exposure(ip_address("10.244.3.0"), IPv4Network("10.244.0.0/16"))
    assert overlay is not None and "overlay network 10.244.0.0/16" in overlay


@pytest.mark.parametrize(
    ("argv", "env"),
    [(["--healthz-ip", "localhost"], {}), ([], {"OVERLAYD_HEALTHZ_IP": "127.0.0.1 bogus"})],
    ids=["flag", "env"],
)
def test_overlayd_refuses_a_bad_healthz_ip_with_exit_code_2(
    argv: list[str], env: dict[str, str]
) -> None:
    overlayd = Path(sys.executable).parent / "overlayd"
    done = subprocess.run(
        [str(overlayd), *argv], env={**os.environ, **env}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "is neither an IP address nor 'overlay'" in done.stderr
