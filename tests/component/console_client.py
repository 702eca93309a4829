"""The web console in-process over a ``MemStore``, driven by aiohttp's test client."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Network
from typing import TypeVar

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from overlayd.console.security import Access
from overlayd.console.server import make_app
from overlayd.console.topology import Draw
from overlayd.store.memory import MemStore
from overlayd.values.gateway_state import GatewayClaim
from overlayd.values.report import NodeReport
from tests.component.ctl import NOW

T = TypeVar("T")
CSRF = "csrf-of-this-test-run-0123456789"
TOKEN = "the-console-token-0123456789"
Client = TestClient[web.Request, web.Application]


def run_console(
    store: MemStore,
    body: Callable[[Client], Awaitable[T]],
    token: str | None = None,
    draw: Draw | None = None,
) -> T:
    """Run ``body`` with a client of a console over ``store`` (on loopback); ``draw``: the
    topology's renderer (None: no topology page)."""

    async def go() -> T:
        app = make_app(store, Access(CSRF, token), lambda: NOW, draw)
        async with TestClient(TestServer(app)) as client:
            return await body(client)

    return asyncio.run(go())


async def page(
    client: Client, path: str, status: int = 200, headers: dict[str, str] | None = None
) -> str:
    """GET ``path``; its HTML (the status checked)."""
    resp = await client.get(path, headers=headers)
    text = await resp.text()
    assert resp.status == status, (resp.status, text[:2000])
    return text


async def post(client: Client, path: str, status: int = 200, **form: str) -> str:
    """POST ``form`` (with this run's CSRF token unless ``csrf`` is given) to ``path``."""
    data = {"csrf": CSRF, **form}
    resp = await client.post(path, data=data)
    text = await resp.text()
    assert resp.status == status, (resp.status, text[:2000])
    return text


async def confirmed(client: Client, path: str, **form: str) -> str:
    """POST a form, check the confirmation page, then confirm it; the result page."""
    ask = await post(client, path, 200, **form)
    assert 'id="confirm"' in ask, ask[:2000]
    return await post(client, path, 200, **form, confirm="yes")


def rows(html: str, table: str) -> list[list[str]]:
    """The cells (tags stripped) of each row of the table with id ``table``."""
    found = re.search(rf'<table id="{table}">(.*?)</table>', html, re.S)
    assert found is not None, f"no table {table}"
    out = []
    for row in re.findall(r"<tr>(.*?)</tr>", found.group(1), re.S):
        cells = re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)
        out.append([re.sub(r"<[^>]+>", "", c).strip() for c in cells])
    return out


def publish(store: MemStore, report: NodeReport) -> None:
    """Publish ``report`` as its node's daemon would (bound to an etcd lease)."""

    async def go() -> None:
        await store.put_status_report(report, await store.grant(20))

    asyncio.run(go())


def claim(site: str, node: str, node_id: str, subnet: str = "10.244.1.0/24") -> GatewayClaim:
    """``node``'s gateway claim for ``site``."""
    return GatewayClaim(site, node, node_id, IPv4Network(subnet))
