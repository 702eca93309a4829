"""What this node learns of its own public address by itself: cloud metadata and STUN.

A control task beside the reconcile loop (docs/nat.md, "Address discovery"). It asks the
cloud metadata service once (``--cloud-metadata``; cached for the process) and the STUN
servers (``--stun-server``) at start and every ``STUN_INTERVAL`` seconds, from the probe
socket, so that a STUN server sees the probe port's NAT mapping. What it learns are
*candidates*: the lease publishes them in ``Candidates``, peers of other sites probe them,
and one becomes a ``PublicIPs`` address only once such a peer confirms it (the reflexive
addresses of ``path_keeper``), as an address learned from the peers themselves does.

When nothing is learned and this node's underlay address reaches only inside its site,
one line says so, with the flags that would fix it: peers of other sites cannot reach
this node then (it still reaches those with public addresses itself). It is a warning
when there are such peers and none confirmed an address of ours, else an info line (a
network of one site needs no public address).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from ipaddress import IPv4Address

from overlayd.discovery.metadata import CloudMetadata, MetadataResult
from overlayd.discovery.stun import StunClient, StunResult, StunServer, query_all
from overlayd.probe.prober import Send, Taker
from overlayd.values.lease_rules import public_error

log = logging.getLogger("overlayd")

STUN_INTERVAL = 300.0
"""Seconds between STUN rounds: a NAT's public address rarely changes."""

WARN_AFTER = 5.0
"""Seconds after the first round before learning nothing is a warning: time for a public
peer of another site to confirm the address it sees us at (a port-preserving NAT)."""

FIX_HINT = (
    "peers of other sites cannot reach this node; give --public-ip ADDRESS, "
    "--stun-server HOST:PORT or --cloud-metadata PROVIDER"
)


def stun_over(share: Callable[[Taker], Send]) -> StunClient:
    """A STUN client over a shared socket (``PathKeeping.share_socket``: the probe
    socket), which hands the client the datagrams that are STUN."""
    clients: list[StunClient] = []
    send = share(lambda data, addr: bool(clients) and clients[0].datagram_received(data, addr))
    clients.append(StunClient(send))
    return clients[0]


class AddressDiscovery:
    """The public addresses this node learned for itself (``learned``, sorted), and a
    one-line ``summary`` of how (for the log, ``/status`` and ``overlayctl peers``)."""

    def __init__(
        self,
        metadata: CloudMetadata | None,
        servers: Sequence[StunServer],
        *,
        interval: float = STUN_INTERVAL,
        warn_after: float = WARN_AFTER,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._metadata, self._servers = metadata, tuple(servers)
        self._interval, self._warn_after, self._sleep = interval, warn_after, sleep
        self.learned: tuple[IPv4Address, ...] = ()
        self.summary = "not asked yet"

    async def run(
        self,
        share: Callable[[Taker], Send],
        on_change: Callable[[], None],
        *,
        site_local: bool,
        needed: Callable[[], bool] = lambda: True,
    ) -> None:
        """Ask, tell ``on_change`` (after the first round, and whenever what was learned
        changed), and ask STUN again every ``interval``, from the probe socket
        (``share``: ``PathKeeping.share_socket``). ``site_local``: our underlay address
        reaches only inside our site; then learning nothing is worth a warning if a public
        address is still ``needed`` by then (peers of other sites exist, and none of them
        confirmed an address of ours), else an info line."""
        stun = stun_over(share) if self._servers else None
        first = True
        while True:
            meta, found = await asyncio.gather(self._ask_metadata(), self._ask_stun(stun))
            learned = tuple(sorted(_addresses(meta, found), key=int))
            self.summary = "; ".join(_describe(meta, found))
            if learned != self.learned or first:
                self.learned = learned
                self._report(first)
                on_change()
            if first and not learned and site_local:
                await self._sleep(self._warn_after)
                if not self.learned:
                    level = logging.WARNING if needed() else logging.INFO
                    log.log(level, "no public address learned (%s): %s", self.summary, FIX_HINT)
            first = False
            if stun is None or not self._servers:
                return  # metadata is asked once: the answer is cached for the process
            await self._sleep(self._interval)

    async def _ask_metadata(self) -> MetadataResult | None:
        return None if self._metadata is None else await self._metadata.lookup()

    async def _ask_stun(self, stun: StunClient | None) -> StunResult | None:
        if stun is None or not self._servers:
            return None
        return await query_all(stun, self._servers)

    def _report(self, first: bool) -> None:
        if self.learned:
            found = ", ".join(map(str, self.learned))
            log.info("public address candidates %s (%s)", found, self.summary)
        elif not first:
            log.info("no public address learned any more (%s)", self.summary)


def _addresses(meta: MetadataResult | None, stun: StunResult | None) -> set[IPv4Address]:
    out = set()
    if meta is not None and meta.found is not None:
        out.add(meta.found.address)
    if stun is not None:
        out.update(mapping.address for _, mapping in stun.mappings)
    return {a for a in out if public_error(a) is None}


def _describe(meta: MetadataResult | None, stun: StunResult | None) -> tuple[str, str]:
    return (
        meta.describe() if meta is not None else "cloud metadata: off",
        stun.describe() if stun is not None else "STUN: no --stun-server given",
    )
