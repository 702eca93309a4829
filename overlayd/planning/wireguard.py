"""The WireGuard planner: leases + this node + path choices -> WireGuard peers and routes.

Pure and deterministic, like ``plan.Planner``: the same inputs give the same plan whatever
the order of ``leases``, and outputs are in subnet order. It decides, per peer:

* **which data plane** carries it: every peer over WireGuard (``wireguard``); peers of our
  own site over VXLAN and the others over WireGuard (``vxlan+wireguard``); every peer over
  VXLAN (``vxlan``). The VXLAN share is handed back as a lease mapping for
  ``Planner.plan``, which keeps planning (and skipping) those peers as before.
* **the WireGuard peer**: the public key from the lease, AllowedIPs = the peer's subnet
  (which holds its overlay address), the network's keepalive and pre-shared key, and the
  endpoint: the chosen underlay address and the peer's ``WireGuardPort`` -- or none, when
  we have no address that reaches the peer (see ``WireGuardPlan.dial_in``).
* **the route** on the WireGuard device: the peer's subnet via its overlay address, the
  same ``RouteEntry`` as VXLAN's, so the data plane diffs and applies it alike.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from overlayd.planning.vxlan import conflict_order, is_me, unusable_reason
from overlayd.values.config import VXLAN, WIREGUARD, BackendConfig
from overlayd.values.kernel_state import RouteEntry
from overlayd.values.keys import PublicKey
from overlayd.values.lease import LeaseRecord

# plan.py's own rules for "this lease is us" and "this peer cannot be programmed", so a
# peer is judged alike whichever data plane carries it
from overlayd.values.paths import PeerPath, guess_path
from overlayd.values.wireguard import Endpoint, WgPeerConfig


@dataclass(frozen=True)
class WireGuardPlan:
    """What the WireGuard device should hold, and which peers stay with VXLAN.

    ``peers``: the WireGuard peer of each peer subnet, in subnet order (give
    ``peers.values()`` to ``diff_peers``). ``routes``: the routes to program on the
    WireGuard device, in subnet order. ``paths``: the chosen path each endpoint follows,
    for the peers that have an endpoint. ``dial_in``: peers configured without endpoint,
    sorted: we have no address that reaches them (another site, no public or verified
    address -- e.g. a host behind masquerade), so they dial us, with keepalive, and
    WireGuard learns their endpoint from their handshake. ``vxlan_leases``: the leases to
    give ``Planner.plan`` (all of them for ``vxlan``, none for ``wireguard``, those of our
    site for ``vxlan+wireguard``; ``me`` included, as the planner expects).
    ``skipped``: peers meant for WireGuard but not configured, and why, sorted.
    """

    peers: dict[IPv4Network, WgPeerConfig]
    routes: dict[IPv4Network, RouteEntry]
    paths: dict[IPv4Network, PeerPath]
    dial_in: tuple[IPv4Network, ...]
    vxlan_leases: Mapping[IPv4Network, LeaseRecord]
    skipped: tuple[tuple[IPv4Network, str], ...]


def _subnet_order(subnet: IPv4Network) -> tuple[int, int]:
    # ints compare in C; IPv4Network's own ordering is Python code, slow for thousands
    return int(subnet.network_address), subnet.prefixlen


def plan_wireguard(
    me: LeaseRecord,
    leases: Mapping[IPv4Network, LeaseRecord],
    backend: BackendConfig,
    paths: Mapping[IPv4Network, PeerPath] | None = None,
    *,
    verified: Collection[IPv4Network] = frozenset(),
    network: IPv4Network | None = None,
    created: Mapping[IPv4Network, int] | None = None,
    unguessable: Collection[IPv4Address] = frozenset(),
) -> WireGuardPlan:
    """The WireGuard side of ``me``'s plan under ``backend``.

    ``paths`` holds the chosen underlay path by peer subnet (peers without one get
    ``guess_path``); ``verified`` the subnets whose chosen path probes have verified.
    The endpoint of a peer follows its chosen path when that address reaches it: always
    for a peer of our own site (same LAN); for a peer of another site when the path is
    verified or is one of the peer's published public addresses. Otherwise -- another
    site's private address, e.g. the lease ``PublicIP`` of a host behind masquerade --
    the peer goes to ``dial_in`` with no endpoint: a wrong endpoint would override the one
    WireGuard learns from the peer's handshake on every sync.

    A peer is skipped (with a reason) when ``Planner`` would skip it (another backend,
    VNI or subnet length, overlapping our subnet, outside ``network``), when its lease has
    no (or an invalid) public key or no WireGuard port, when its key is ours, or when an
    older lease (``created``, as ``Planner.plan``: ``conflict_order``) uses its key. A peer
    whose only addresses are ``unguessable`` (our etcd endpoints) and not verified goes
    to ``dial_in``: no endpoint is guessed at the etcd host.
    """
    if backend.type == VXLAN:
        return WireGuardPlan({}, {}, {}, (), leases, ())
    mixed = backend.type != WIREGUARD
    vxlan_leases: dict[IPv4Network, LeaseRecord] = {}
    candidates: list[tuple[IPv4Network, LeaseRecord]] = []
    for subnet, peer in leases.items():
        if mixed and peer.site == me.site:
            vxlan_leases[subnet] = peer
        elif not is_me(me, subnet, peer):
            candidates.append((subnet, peer))
    candidates.sort(key=lambda item: _subnet_order(item[0]))

    ours = PublicKey.from_base64(me.public_key) if me.public_key else None
    owner: dict[PublicKey, IPv4Network] = {}
    skipped: list[tuple[IPv4Network, str]] = []
    peers: dict[IPv4Network, WgPeerConfig] = {}
    routes: dict[IPv4Network, RouteEntry] = {}
    chosen: dict[IPv4Network, PeerPath] = {}
    dial_in: list[IPv4Network] = []
    given = paths or {}
    for subnet, peer in candidates:  # in subnet order: skipped and dial_in come out sorted
        reason = unusable_reason(me, peer, network)
        if reason is None:
            reason = _missing_wireguard(peer)
        if reason is not None:
            skipped.append((subnet, reason))
            continue
        assert peer.public_key is not None and peer.wireguard_port is not None
        try:
            key = PublicKey.from_base64(peer.public_key)
        except ValueError as exc:
            skipped.append((subnet, f"invalid public key: {exc}"))
            continue
        if key == ours:
            skipped.append((subnet, "its public key is this node's own"))
            continue
        holder = owner.get(key)
        if holder is not None:
            if conflict_order(holder, created) < conflict_order(subnet, created):
                skipped.append((subnet, _key_taken(peer, key, leases[holder])))
                continue
            # the holder came in subnet order but is the newer lease: it gives way
            skipped.append((holder, _key_taken(leases[holder], key, peer)))
            for out in (peers, routes, chosen):
                out.pop(holder, None)
            if holder in dial_in:
                dial_in.remove(holder)
        owner[key] = subnet
        path = given.get(subnet) or guess_path(me, peer, unguessable)
        endpoint = None
        if path is None:
            dial_in.append(subnet)
        elif peer.site == me.site or subnet in verified or path.address in peer.public_ips:
            endpoint = Endpoint(path.address, peer.wireguard_port)
            chosen[subnet] = path
        else:
            dial_in.append(subnet)
        peers[subnet] = WgPeerConfig(
            public_key=key,
            endpoint=endpoint,
            allowed_ips=(subnet,),
            persistent_keepalive=backend.persistent_keepalive,
            preshared_key=backend.psk,
        )
        routes[subnet] = RouteEntry(subnet, peer.overlay_ip)
    skipped.sort(key=lambda item: _subnet_order(item[0]))  # an evicted holder came first
    return WireGuardPlan(peers, routes, chosen, tuple(dial_in), vxlan_leases, tuple(skipped))


def _key_taken(peer: LeaseRecord, key: PublicKey, holder: LeaseRecord) -> str:
    return f"{peer.node}'s public key {key} already used by {holder.node} ({holder.subnet})"


def _missing_wireguard(peer: LeaseRecord) -> str | None:
    """Why ``peer``'s lease cannot make a WireGuard peer, None if it can."""
    if not peer.public_key:
        return "no public key in its lease: cannot reach it over WireGuard"
    if peer.wireguard_port is None:
        return "no WireGuardPort in its lease: it does not run WireGuard"
    return None
