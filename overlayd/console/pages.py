"""The console's pages: jinja2 templates (package data, autoescaped: every value from etcd
is HTML-escaped) rendered from ``view.view_of`` (built again only when something changed or
a second passed).

The read-only pages refresh themselves (``<meta refresh>``: no script at all); the pages
with forms do not, so what an operator types is not lost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jinja2
from aiohttp import web

from overlayd.console.live import Live
from overlayd.console.matrix import NODE_MATRIX_MAX
from overlayd.console.security import Access
from overlayd.console.view import ConsoleStore, NetworkView, Stored, read_stored, view_of
from overlayd.values.config import BACKEND_TYPES, TOPOLOGY_MODES, VXLAN_WIREGUARD
from overlayd.values.errors import LeaseFormatError
from overlayd.values.lease import parse_subnet_key_name
from overlayd.values.report import GATEWAY, PRIVATE, PUBLIC, PUNCHED, RELAY

OK_KINDS = (PRIVATE, PUBLIC, PUNCHED, GATEWAY, RELAY)  # the matrix's legend: verified kinds
REFRESH = 5  # seconds between refreshes of a read-only page
MATRIX_REFRESH = 2  # the matrix: a broken path shows within a report interval (5 s) and this

# the "create the network" form: field name, label, placeholder (the flags of network init)
INIT_FIELDS = (
    ("network", "network", "10.244.0.0/16"),
    ("subnet_len", "subnet length", "24"),
    ("subnet_min", "first subnet", "(network + 1 subnet)"),
    ("subnet_max", "last subnet", "(last of the network)"),
    ("vni", "VXLAN VNI", "1"),
    ("port", "VXLAN port", "8472"),
    ("mtu", "MTU", "(underlay minus overhead)"),
    ("listen_port", "WireGuard port", "51820"),
    ("keepalive", "WireGuard keepalive (s)", "25"),
    ("site_modes", "site modes", "site-a=gateway, site-b=mesh"),
    ("dns_zone", "DNS zone", "overlay.internal"),
)


class Pages:
    """Renders the templates; serves the GET pages of one store."""

    def __init__(
        self, store: ConsoleStore, live: Live, access: Access, clock: Callable[[], float]
    ) -> None:
        self._store = store
        self._live = live
        self._access = access
        self._clock = clock  # the wall clock: reports carry their writers' wall-clock times
        self._last: tuple[tuple[int, str | None, Stored, int], NetworkView] | None = None
        self._env = jinja2.Environment(
            loader=jinja2.PackageLoader("overlayd.console", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )

    def html(self, template: str, title: str, status: int = 200, **ctx: Any) -> web.Response:
        """The page ``template`` with ``ctx`` (and the CSRF token every form carries)."""
        ctx.setdefault("refresh", 0)
        text = self._env.get_template(template).render(
            title=title, csrf=self._access.csrf, modes=TOPOLOGY_MODES, **ctx
        )
        return web.Response(status=status, text=text, content_type="text/html")

    def message(self, status: int, what: str) -> web.Response:
        return self.html("message.html", "Error", status, what=what)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.overview),
            web.get("/sites", self.sites),
            web.get("/nodes", self.nodes),
            web.get("/nodes/{key}", self.node),
            web.get("/leases", self.leases),
            web.get("/matrix", self.matrix),
            web.get("/network", self.network),
        ]

    async def view(self) -> NetworkView:
        """The view now: built again when the watched state, the config or the reservations
        changed, or a second passed (report ages); else the last one (at 5,000 nodes a
        build costs tens of milliseconds, and a browser asks for a page every few seconds)."""
        observed = await self._live.observed()
        now = self._clock()
        key = (observed.version, observed.trouble, await read_stored(self._store), int(now))
        if self._last is None or self._last[0] != key:
            self._last = (key, view_of(key[2], observed, now))
        return self._last[1]

    async def overview(self, _request: web.Request) -> web.Response:
        view = await self.view()
        return self.html(
            "overview.html", "Overview", view=view, small=NODE_MATRIX_MAX, refresh=REFRESH
        )

    async def sites(self, _request: web.Request) -> web.Response:
        return self.html("sites.html", "Sites", view=await self.view())

    async def nodes(self, _request: web.Request) -> web.Response:
        return self.html("nodes.html", "Nodes", view=await self.view(), refresh=REFRESH)

    async def node(self, request: web.Request) -> web.Response:
        try:
            subnet = parse_subnet_key_name(request.match_info["key"])
        except LeaseFormatError:
            return self.message(404, "no such node")
        view = await self.view()
        found = view.node(subnet)
        if found is None:
            return self.message(404, f"no lease for {subnet}")
        ttl = await self._store.ttl_left(found.lease_id) if found.lease_id else None
        ttl_text = "-" if ttl is None else ("expired" if ttl < 0 else f"{ttl} s")
        title = found.node or str(subnet)
        report = view.reports.fresh.get(found.node) if found.error is None else None
        return self.html(
            "node.html", f"Node {title}", node=found, ttl=ttl_text, report=report,
            reports=view.reports, now=self._clock(), refresh=REFRESH,
        )  # fmt: skip

    async def matrix(self, _request: web.Request) -> web.Response:
        view = await self.view()
        return self.html(
            "matrix.html",
            "Connectivity",
            view=view,
            sites=view.site_matrix,
            nodes=view.node_matrix,
            kinds=OK_KINDS,
            refresh=MATRIX_REFRESH,
        )

    async def leases(
        self, _request: web.Request, error: str | None = None, form: Mapping[str, str] | None = None
    ) -> web.Response:
        status = 400 if error else 200
        view = await self.view()
        return self.html("leases.html", "Leases", status, view=view, error=error, form=form or {})

    async def network(
        self, _request: web.Request, error: str | None = None, form: Mapping[str, str] | None = None
    ) -> web.Response:
        return self.html(
            "network.html",
            "Network",
            400 if error else 200,
            view=await self.view(),
            error=error,
            form=form or {},
            fields=INIT_FIELDS,
            backends=BACKEND_TYPES,
            default_backend=VXLAN_WIREGUARD,
        )
