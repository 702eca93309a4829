"""What this node publishes in its own lease: the first record, and what it republishes.

Owns the facts peers learn from our lease after the first claim: the public key our
devices use (changed by a rotation, then acknowledged to ``overlayctl node rotate-key``);
with ``--public-ip auto``, the public addresses peers in other sites confirmed and
those the node learned itself (``Candidates``, overlayd/agent/discovery.py); our round
trips to relays (``RelayRTTs``, overlayd/agent/relay_keeper.py); and the endpoints peers
saw us at and we saw them at (``Endpoints``, ``Seen``: docs/nat.md). The
lease keeper (overlayd/store/lease_keeper.py) writes them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

from overlayd.agent.options import DaemonOptions
from overlayd.agent.path_api import PathKeeping
from overlayd.agent.rotation import KeyRotation
from overlayd.dataplane.api import Underlay
from overlayd.disk.node_key import NodeKey
from overlayd.disk.state_dir import NodeIdentity
from overlayd.store.lease_keeper import LeaseKeeper
from overlayd.values.config import NetworkConfig
from overlayd.values.keys import PublicKey
from overlayd.values.lease import LeaseRecord
from overlayd.values.lease_rules import check_own_record, check_scope, publishable
from overlayd.values.paths import is_site_local

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

    async def publish_relay_rtts(self, rtts: tuple[tuple[IPv4Network, int], ...]) -> None:
        """Our lease's ``RelayRTTs`` (overlayd/planning/relay.py ``rtts_to_publish``)."""
        me = self._me()
        if me.relay_rtts != rtts:
            await self._keeper.republish(replace(me, relay_rtts=rtts))

    async def publish_observed(self, peers: Mapping[IPv4Network, LeaseRecord]) -> None:
        """Our ``Endpoints`` (what peers of other sites saw of our sockets) and our
        ``Seen`` (what we saw of peers behind NAT): docs/nat.md, "Endpoints seen by
        others"."""
        me = self._me()
        endpoints, seen = self._paths.observed(me, peers)
        # peers would refuse our whole lease for an endpoint inside the overlay network
        if why := check_scope(replace(me, endpoints=endpoints, seen=seen), self._network):
            log.warning("not publishing the endpoints seen: %s", why)
            return
        if endpoints == me.endpoints and seen == me.seen:
            return
        if endpoints != me.endpoints:
            log.info(
                "endpoints peers see us at: probe %s, WireGuard %s",
                ", ".join(map(str, endpoints.probe)) or "-",
                ", ".join(map(str, endpoints.wireguard)) or "-",
            )
        await self._keeper.republish(replace(me, endpoints=endpoints, seen=seen))

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


def relays(opts: DaemonOptions, cfg: NetworkConfig, underlay: Underlay) -> bool:
    """Whether this node relays (``--relay``; by default when it has a public address of
    its own or from ``--public-ip``). Only WireGuard is relayed (in the gateway topology,
    by a node while it is an entry point: a gateway, or a host of a mesh-mode site)."""
    if not cfg.backend.uses_wireguard:
        return False
    if opts.relay is not None:
        return opts.relay
    return bool(opts.public_ips) or not is_site_local(underlay.address)


def lease_template(
    opts: DaemonOptions,
    cfg: NetworkConfig,
    identity: NodeIdentity,
    underlay: Underlay,
    key: NodeKey,
    probe_port: int,
) -> LeaseRecord:
    """Our lease record but for the subnet: the keeper fills in the one it claims.
    ``ConfigError`` if peers would refuse it (our own flags are wrong)."""
    backend = cfg.backend
    template = LeaseRecord(
        subnet=cfg.network,  # placeholder: the keeper fills in the claimed subnet
        node=opts.node_name,
        node_id=identity.node_id,
        public_ip=opts.public_ips[0] if opts.public_ips else underlay.address,
        vtep_mac=identity.vtep_mac,
        vni=backend.vni,
        site=opts.site,
        private_ips=(underlay.address,),
        public_ips=opts.public_ips,
        backend_type=backend.type,
        public_key=key.public.base64,
        probe_port=probe_port,
        wireguard_port=backend.listen_port if backend.uses_wireguard else None,
        gateway_candidate=opts.gateway_candidate if cfg.topology.uses_gateways else None,
        relay=relays(opts, cfg, underlay) or None,
        dns_names=opts.dns_names,
    )
    check_own_record(template, cfg.network)  # peers would refuse it otherwise
    return template
