"""The topology picture: the observed network (``planning.observed``) drawn by the function
the composition root passes in (overlayctl's ``graph -o svg``: Graphviz's ``dot``), served
as ``/topology.svg`` and shown by ``/topology`` as an image (an SVG loaded as an image
runs no script, whatever its text says).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from overlayd.console.live import Live
from overlayd.console.pages import Pages
from overlayd.console.view import ConsoleStore
from overlayd.planning.observed import ObservedNetwork, observe_network
from overlayd.values.config import MESH, TopologyConfig, parse_config
from overlayd.values.errors import OverlaydError

Draw = Callable[[ObservedNetwork], str]
"""SVG text of an observed network; ``OverlaydError`` (e.g. ``ToolError``) if it cannot."""


class Topology:
    """Serves the picture of the network ``live`` follows."""

    def __init__(
        self,
        store: ConsoleStore,
        live: Live,
        pages: Pages,
        draw: Draw,
        clock: Callable[[], float],
    ) -> None:
        self._store, self._live, self._pages = store, live, pages
        self._draw, self._clock = draw, clock

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/topology", self.page), web.get("/topology.svg", self.svg)]

    async def page(self, _request: web.Request) -> web.Response:
        return self._pages.html("topology.html", "Topology", refresh=10)

    async def svg(self, _request: web.Request) -> web.Response:
        net = await self._observe()
        try:
            text = await asyncio.to_thread(self._draw, net)  # dot runs for a while
        except OverlaydError as exc:
            return self._pages.message(503, f"error: {exc}")
        return web.Response(text=text, content_type="image/svg+xml")

    async def _observe(self) -> ObservedNetwork:
        observed = await self._live.observed()
        try:
            topology = parse_config(await self._store.get_config_text()).topology
        except OverlaydError:  # no config, or a broken one: every site in the default mode
            topology = TopologyConfig(MESH)
        return observe_network(
            [s.record for s in observed.leases.leases if s.record is not None],
            observed.reports.reports,
            {site: claim.node for site, claim in observed.gateways.claims.items()},
            topology.mode_of,
            self._clock(),
            malformed=observed.reports.errors,
        )
