"""The console's aiohttp application and listener: every request passes ``guard`` (Host,
token, CSRF; security headers on every answer), within the status port's size limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from overlayd.agent.status_guard import DEFAULT_LIMITS, Limits
from overlayd.console.actions import Actions
from overlayd.console.live import Live
from overlayd.console.pages import Pages
from overlayd.console.security import COOKIE, Access, Listen
from overlayd.console.topology import Draw, Topology
from overlayd.console.view import ConsoleStore
from overlayd.values.errors import ConfigError

MAX_BODY = 64 * 1024  # bytes of a request body: the largest form is well under 4 KiB
HEADERS = {
    # no script, no frames, forms only to us, nothing cached or leaked in a Referer
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_app(
    store: ConsoleStore,
    access: Access,
    clock: Callable[[], float] = time.time,
    draw: Draw | None = None,
) -> web.Application:
    """The console's application over ``store``, guarded by ``access``; ``clock``: the
    wall clock reports' ages are measured with; ``draw``: the topology picture's renderer
    (None: no topology page)."""
    live = Live(store)
    pages = Pages(store, live, access, clock)
    actions = Actions(store, pages)

    @web.middleware
    async def guard(request: web.Request, handler: _Handler) -> web.StreamResponse:
        response = await _checked(request, handler, pages, access)
        response.headers.update(HEADERS)
        return response

    async def login_page(_request: web.Request) -> web.Response:
        return pages.html("login.html", "Log in", error=None)

    async def login(request: web.Request) -> web.StreamResponse:
        token = (await request.post()).get("token")
        if not isinstance(token, str) or not access.token_ok(None, token):
            return pages.html("login.html", "Log in", 401, error="wrong token")
        response = web.Response(status=303, headers={"Location": "/"})
        response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
        return response

    async def following(_app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(live.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY)
    app.cleanup_ctx.append(following)
    app.add_routes([*pages.routes(), *actions.routes()])
    if draw is not None:
        app.add_routes(Topology(store, live, pages, draw, clock).routes())
    app.add_routes([web.get("/login", login_page), web.post("/login", login)])
    return app


async def _checked(
    request: web.Request, handler: _Handler, pages: Pages, access: Access
) -> web.StreamResponse:
    if not access.host_ok(request.url.host):
        return pages.message(403, "this console does not answer for that host name")
    if request.path != "/login":
        authorization = request.headers.get("Authorization")
        if not access.token_ok(authorization, request.cookies.get(COOKIE)):
            refused = pages.html("login.html", "Log in", 401, error="log in with the token")
            refused.headers["WWW-Authenticate"] = 'Bearer realm="overlayd console"'
            return refused
        if request.method == "POST":
            given = (await request.post()).get("csrf")
            if not access.csrf_ok(given if isinstance(given, str) else None):
                return pages.message(403, "the form is stale or not ours: reload the page")
    try:
        return await handler(request)
    except web.HTTPException as exc:  # the router's 404 and 405, a body over the limit (413)
        return pages.message(exc.status, exc.reason)


async def serve(
    store: ConsoleStore,
    access: Access,
    listen: Listen,
    ready: Callable[[Listen], None],
    clock: Callable[[], float],
    draw: Draw | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> None:
    """Serve the console on ``listen`` until cancelled; ``ready`` gets the bound address
    (the port filled in when ``listen`` asked for 0). ``ConfigError`` if it cannot bind."""
    runner = web.AppRunner(
        make_app(store, access, clock, draw),
        handle_signals=False,
        access_log=None,
        keepalive_timeout=limits.deadline,
        max_line_size=limits.max_line_size,
        max_field_size=limits.max_field_size,
        max_headers=limits.max_headers,
    )
    await runner.setup()
    try:
        sock = _bind(listen)
        await web.SockSite(runner, sock).start()
        ready(Listen(listen.address, int(sock.getsockname()[1])))
        await asyncio.Event().wait()  # until cancelled (Ctrl-C)
    finally:
        await runner.cleanup()


def _bind(listen: Listen) -> socket.socket:
    family = socket.AF_INET6 if listen.address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((str(listen.address), listen.port))
        sock.listen(100)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {listen.url}: {exc.strerror}",
            hint="is another console running? choose another --listen port",
        ) from None
    return sock
