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
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from overlayd.planning.vxlan import conflict_order, is_me, unusable_reason
from overlayd.values.config import VXLAN, WIREGUARD, BackendConfig
from overlayd.values.kernel_state import RouteEntry
from overlayd.values.keys import PublicKey
from overlayd.values.lease import LeaseRecord

# plan.py's own rules for "this lease is us" and "this peer cannot be programmed", so a
# peer is judged alike whichever data plane carries it
from overlayd.values.paths import PUNCHED, PeerPath, guess_path
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
    vxlan_leases, candidates = _split_by_plane(me, leases, mixed=backend.type != WIREGUARD)
    ours = PublicKey.from_base64(me.public_key) if me.public_key else None
    out = _Building()
    given = paths or {}
    for subnet, peer in candidates:  # in subnet order: skipped and dial_in come out sorted
        key = _key_or_reason(me, peer, network, ours)
        if isinstance(key, str):
            out.skipped.append((subnet, key))
            continue
        holder = out.owner.get(key)
        if holder is not None and not out.settle(key, holder, subnet, peer, leases, created):
            continue
        out.owner[key] = subnet
        path = given.get(subnet) or guess_path(me, peer, unguessable)
        endpoint = None if path is None else _endpoint(me, subnet, peer, path, verified)
        config = WgPeerConfig(
            public_key=key,
            endpoint=endpoint,
            allowed_ips=(subnet,),
            persistent_keepalive=backend.persistent_keepalive,
            preshared_key=backend.psk,
        )
        out.add(subnet, peer, config, None if endpoint is None else path)
    return out.finish(vxlan_leases)


def _split_by_plane(
    me: LeaseRecord, leases: Mapping[IPv4Network, LeaseRecord], *, mixed: bool
) -> tuple[dict[IPv4Network, LeaseRecord], list[tuple[IPv4Network, LeaseRecord]]]:
    """The leases VXLAN carries (our site's, when ``mixed``; ``me`` among them) and the
    peers meant for WireGuard, in subnet order."""
    vxlan_leases: dict[IPv4Network, LeaseRecord] = {}
    candidates: list[tuple[IPv4Network, LeaseRecord]] = []
    for subnet, peer in leases.items():
        if mixed and peer.site == me.site:
            vxlan_leases[subnet] = peer
        elif not is_me(me, subnet, peer):
            candidates.append((subnet, peer))
    candidates.sort(key=lambda item: _subnet_order(item[0]))
    return vxlan_leases, candidates


def _key_or_reason(
    me: LeaseRecord, peer: LeaseRecord, network: IPv4Network | None, ours: PublicKey | None
) -> PublicKey | str:
    """The WireGuard public key of ``peer``, or why it cannot be a WireGuard peer."""
    reason = unusable_reason(me, peer, network)
    if reason is None:
        reason = _missing_wireguard(peer)
    if reason is not None:
        return reason
    assert peer.public_key is not None
    try:
        key = PublicKey.from_base64(peer.public_key)
    except ValueError as exc:
        return f"invalid public key: {exc}"
    if key == ours:
        return "its public key is this node's own"
    return key


def _endpoint(
    me: LeaseRecord,
    subnet: IPv4Network,
    peer: LeaseRecord,
    path: PeerPath,
    verified: Collection[IPv4Network],
) -> Endpoint | None:
    """Where to send ``peer``'s WireGuard packets along ``path``; None (it dials in) unless
    that address reaches it: same site, a verified path, or one of its public addresses.
    A punched path goes to its NAT's WireGuard mapping (``PeerPath.wireguard_port``);
    without one (we are reachable ourselves: it dials in) it has none."""
    if path.kind == PUNCHED:
        return None if path.wireguard_port is None else Endpoint(path.address, path.wireguard_port)
    if peer.site == me.site or subnet in verified or path.address in peer.public_ips:
        assert peer.wireguard_port is not None
        return Endpoint(path.address, peer.wireguard_port)
    return None


@dataclass
class _Building:
    """The parts of a ``WireGuardPlan`` while ``plan_wireguard`` fills them in, and which
    subnet holds each public key so far."""

    peers: dict[IPv4Network, WgPeerConfig] = field(default_factory=dict)
    routes: dict[IPv4Network, RouteEntry] = field(default_factory=dict)
    chosen: dict[IPv4Network, PeerPath] = field(default_factory=dict)
    dial_in: list[IPv4Network] = field(default_factory=list)
    skipped: list[tuple[IPv4Network, str]] = field(default_factory=list)
    owner: dict[PublicKey, IPv4Network] = field(default_factory=dict)

    def settle(
        self,
        key: PublicKey,
        holder: IPv4Network,
        subnet: IPv4Network,
        peer: LeaseRecord,
        leases: Mapping[IPv4Network, LeaseRecord],
        created: Mapping[IPv4Network, int] | None,
    ) -> bool:
        """``peer`` (at ``subnet``) claims ``key``, which ``holder`` has: the older lease keeps it
        (``conflict_order``). True if ``subnet`` wins (``holder`` is then taken out and
        skipped), False if it is skipped."""
        if conflict_order(holder, created) < conflict_order(subnet, created):
            self.skipped.append((subnet, _key_taken(peer, key, leases[holder])))
            return False
        # the holder came in subnet order but is the newer lease: it gives way
        self.skipped.append((holder, _key_taken(leases[holder], key, peer)))
        for out in (self.peers, self.routes, self.chosen):
            out.pop(holder, None)
        if holder in self.dial_in:
            self.dial_in.remove(holder)
        return True

    def add(
        self, subnet: IPv4Network, peer: LeaseRecord, config: WgPeerConfig, path: PeerPath | None
    ) -> None:
        """Configure ``peer``; ``path``: the one its endpoint follows, None if it dials in."""
        if path is None:
            self.dial_in.append(subnet)
        else:
            self.chosen[subnet] = path
        self.peers[subnet] = config
        self.routes[subnet] = RouteEntry(subnet, peer.overlay_ip)

    def finish(self, vxlan_leases: Mapping[IPv4Network, LeaseRecord]) -> WireGuardPlan:
        """The plan, with ``vxlan_leases`` for VXLAN's planner."""
        self.skipped.sort(key=lambda item: _subnet_order(item[0]))  # an evicted holder came first
        return WireGuardPlan(
            self.peers,
            self.routes,
            self.chosen,
            tuple(self.dial_in),
            vxlan_leases,
            tuple(self.skipped),
        )


def _key_taken(peer: LeaseRecord, key: PublicKey, holder: LeaseRecord) -> str:
    return f"{peer.node}'s public key {key} already used by {holder.node} ({holder.subnet})"


def _missing_wireguard(peer: LeaseRecord) -> str | None:
    """Why ``peer``'s lease cannot make a WireGuard peer, None if it can."""
    if not peer.public_key:
        return "no public key in its lease: cannot reach it over WireGuard"
    if peer.wireguard_port is None:
        return "no WireGuardPort in its lease: it does not run WireGuard"
    return None
