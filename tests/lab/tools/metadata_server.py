"""``metadata_server PROVIDER HOST PORT ANSWER``: one cloud's instance metadata API.

Serves what ``overlayd.discovery.metadata`` asks of each provider, with the provider's own
rules: AWS IMDSv2 (a token from ``PUT /latest/api/token`` with a TTL of 1-21600 s, required
on the GET: 401 without), GCP (``Metadata-Flavor: Google`` required, 403 without, and set
on every answer), Azure (``Metadata: true``, ``api-version`` and ``format=text`` required,
400 without; ``X-Forwarded-For`` refused), Alibaba Cloud in enforced security hardening
mode (a token like AWS's, 403 without) and Tencent Cloud (a plain GET). Any other path is
404. ``ANSWER`` is the public address served (``""``: the instance has none), or one per
client as ``PRIVATE=PUBLIC,PRIVATE=PUBLIC`` (a request is answered by its remote address:
a router's server answers each host of its LAN its own elastic IP; a client not named has
none). Tests in one process use ``metadata_app`` with a ``Behaviour`` for hostile answers;
run as a program (in a namespace, at the provider's well-known address) it prints
``ready PORT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from overlayd.discovery.metadata import Provider

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ADDRESS_PATHS = {
    "aws": "/latest/meta-data/public-ipv4",
    "gcp": "/computeMetadata/v1/instance/network-interfaces/0/access-configs/0/external-ip",
    "azure": "/metadata/instance/network/interface/0/ipv4/ipAddress/0/publicIpAddress",
    "alibaba": "/latest/meta-data/eipv4",
    "tencent": "/latest/meta-data/public-ipv4",
}
TOKEN_HEADERS = {  # provider: (TTL header of the PUT, token header of the GET, status without)
    "aws": ("X-aws-ec2-metadata-token-ttl-seconds", "X-aws-ec2-metadata-token", 401),
    "alibaba": ("X-aliyun-ecs-metadata-token-ttl-seconds", "X-aliyun-ecs-metadata-token", 403),
}


@dataclass(frozen=True)
class Behaviour:
    """How the address answer misbehaves: a status, a body of ``size`` bytes sent in
    chunks, a ``delay`` before answering (seconds)."""

    status: int = 200
    size: int = 0  # 0: the address itself
    delay: float = 0.0


@dataclass
class Requests:
    """What the server was asked: (method, path) per request, in order."""

    seen: list[tuple[str, str]]


def _refusal(provider: str, request: web.Request, tokens: set[str]) -> web.Response | None:
    """The provider's answer to a request missing what it requires (None: it is fine)."""
    if provider in TOKEN_HEADERS:
        _, header, status = TOKEN_HEADERS[provider]
        if request.headers.get(header) not in tokens:
            return web.Response(status=status, text="Unauthorized")
    if provider == "gcp" and request.headers.get("Metadata-Flavor") != "Google":
        return web.Response(status=403, text="Missing Metadata-Flavor:Google header.")
    if provider == "azure":
        query = request.query
        if (
            request.headers.get("Metadata") != "true"
            or "X-Forwarded-For" in request.headers
            or "api-version" not in query
            or query.get("format") != "text"
        ):
            return web.Response(status=400, text='{"error": "Bad request"}')
    return None


def parse_answer(text: str) -> str | Mapping[str, str]:
    """``ANSWER`` of the command line: one address (or ``""``), or ``PRIVATE=PUBLIC,...``."""
    if "=" not in text:
        return text
    return dict(pair.split("=", 1) for pair in text.split(","))


def metadata_app(
    provider: str,
    answer: str | Mapping[str, str],
    behaviour: Behaviour = Behaviour(),
    log: Requests | None = None,
) -> web.Application:
    """The aiohttp application serving ``provider``'s metadata API with ``answer`` (one
    address for every client, or each client's by its remote address; none: ``""``)."""
    tokens: set[str] = set()
    extra = {"Metadata-Flavor": "Google"} if provider == "gcp" else {}

    async def token(request: web.Request) -> web.Response:
        ttl = request.headers.get(TOKEN_HEADERS[provider][0], "")
        if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
            return web.Response(status=400, text="Bad Request")
        tokens.add(value := secrets.token_urlsafe(42))
        return web.Response(text=value)

    async def address(request: web.Request) -> web.StreamResponse:
        if (refused := _refusal(provider, request, tokens)) is not None:
            return refused
        await asyncio.sleep(behaviour.delay)
        if behaviour.status != 200:
            return web.Response(status=behaviour.status, text="Internal Server Error")
        if not behaviour.size:
            text = answer if isinstance(answer, str) else answer.get(request.remote or "", "")
            return web.Response(text=text, headers=extra)
        stream = web.StreamResponse(headers=extra)  # chunked: no Content-Length to trust
        await stream.prepare(request)
        for _ in range(behaviour.size // 4096):
            await stream.write(b"x" * 4096)
        return stream

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        if log is not None:
            log.seen.append((request.method, request.path))
        return await handler(request)

    app = web.Application(middlewares=[record])
    if provider in TOKEN_HEADERS:
        app.router.add_put("/latest/api/token", token)
    app.router.add_get(ADDRESS_PATHS[provider], address)
    return app


@contextlib.asynccontextmanager
async def serving(
    apps: Mapping[Provider, web.Application],
) -> AsyncIterator[dict[Provider, str]]:
    """Base URLs for every provider: those in ``apps`` served on 127.0.0.1, the others a
    bound port nobody listens on (connections refused at once)."""
    runners: list[web.AppRunner] = []
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    bases = {p: f"http://127.0.0.1:{closed.getsockname()[1]}" for p in Provider}
    try:
        for provider, app in apps.items():
            runner = web.AppRunner(app, shutdown_timeout=0.1)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            runners.append(runner)
            bases[provider] = f"http://127.0.0.1:{runner.addresses[0][1]}"
        yield bases
    finally:
        for runner in runners:
            await runner.cleanup()
        closed.close()


async def serve(provider: str, host: str, port: int, answer: str | Mapping[str, str]) -> None:
    runner = web.AppRunner(metadata_app(provider, answer))
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    assert runner.addresses, "not listening"
    print(f"ready {runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2], int(sys.argv[3]), parse_answer(sys.argv[4])))
