"""What this node republishes in its own lease while it runs.

Owns two facts peers learn from our lease after the first claim: the public key our
devices use (changed by a rotation, then acknowledged to ``overlayctl node rotate-key``)
and, with ``--public-ip auto``, the public addresses peers in other sites confirmed and
those the node learned itself (``Candidates``, overlayd/agent/discovery.py). The
lease keeper (overlayd/store/lease_keeper.py) writes them.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

from overlayd.agent.path_api import PathKeeping
from overlayd.agent.rotation import KeyRotation
from overlayd.disk.node_key import NodeKey
from overlayd.store.lease_keeper import LeaseKeeper
from overlayd.values.keys import PublicKey
from overlayd.values.lease import LeaseRecord
from overlayd.values.lease_rules import publishable

log = logging.getLogger("overlayd")


class LeasePublisher:
    """Republishes our lease through ``keeper``; ``configured``: ``--public-ip``'s."""

    def __init__(
        self,
        keeper: LeaseKeeper,
        rotation: KeyRotation,
        paths: PathKeeping,
        network: IPv4Network,
        configured: tuple[IPv4Address, ...],
    ) -> None:
        self._keeper, self._rotation, self._paths = keeper, rotation, paths
        self._network, self._configured = network, configured

    def _me(self) -> LeaseRecord:
        assert self._keeper.held is not None
        return self._keeper.held.record

    async def publish_key(self, key: NodeKey) -> None:
        """Our lease carries the key our devices use (changed by a rotation); then the
        rotation request is acknowledged."""
        me, ours = self._me(), key.public.base64
        if me.public_key != ours:
            await self._keeper.republish(replace(me, public_key=ours))
        published = self._me().public_key
        await self._rotation.acknowledge(PublicKey.from_base64(published) if published else None)

    async def publish_public_ips(self, learned: tuple[IPv4Address, ...] = ()) -> None:
        """``--public-ip auto``: publish the addresses peers in other sites confirmed as
        ``PublicIPs``, and those we ``learned`` ourselves (cloud metadata, STUN) that no
        such peer confirmed yet as ``Candidates``: peers probe those, never guess them."""
        me = self._me()
        found = publishable(self._paths.public_addresses(me), self._network)
        wanted = publishable(sorted({*self._configured, *found}), self._network)
        candidates = publishable(sorted(set(learned) - set(wanted)), self._network)
        if wanted == tuple(sorted(me.public_ips)) and candidates == tuple(sorted(me.candidates)):
            return
        if wanted != tuple(sorted(me.public_ips)):
            log.info("public addresses confirmed by peers: %s", ", ".join(map(str, found)))
        await self._keeper.republish(replace(me, public_ips=wanted, candidates=candidates))
