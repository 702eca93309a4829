"""Underlay paths to a peer: the chosen path value, a peer's candidates, and the guess
used until probes have verified something (the one rule both planners and the chooser use).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from overlayd.values.lease import LeaseRecord
from overlayd.values.wireguard import Endpoint

PRIVATE, PUBLIC, PUNCHED = "private", "public", "punched"

SITE_LOCAL = tuple(
    IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
)
"""Ranges that reach only inside a site (RFC 1918 and carrier-grade NAT space): another
site's address in them is somebody else's host in ours, or nobody's."""


def is_site_local(address: IPv4Address) -> bool:
    """Whether ``address`` lies in a range that reaches only inside a site."""
    return any(address in net for net in SITE_LOCAL)


def usable_fallback(me_site: str, peer: PeerCandidates) -> IPv4Address | None:
    """The lease ``PublicIP`` as a last resort, unless it is a site-local address of a
    peer in another site: a node without a public address publishes its private one
    there, and with colliding ranges that address is a host of our own LAN. Such an
    address is neither probed nor guessed (it is used only if it is also published as a
    public candidate)."""
    fallback = peer.fallback
    if fallback is None or (peer.site != me_site and is_site_local(fallback)):
        return None
    return fallback


@dataclass(frozen=True, slots=True)
class PeerPath:
    """The underlay address chosen for a peer, and why."""

    address: IPv4Address
    kind: str  # PRIVATE | PUBLIC | PUNCHED
    reason: str
    # PUNCHED only: the peer's WireGuard port as its NAT maps it (others' ports are its
    # lease's ``WireGuardPort``); None elsewhere
    wireguard_port: int | None = None


@dataclass(frozen=True, slots=True)
class PeerCandidates:
    """A peer's published underlay candidates (from its lease)."""

    site: str
    private: tuple[IPv4Address, ...] = ()
    public: tuple[IPv4Address, ...] = ()
    fallback: IPv4Address | None = None  # flannel's PublicIP: the guess of last resort
    unconfirmed: tuple[IPv4Address, ...] = ()  # learned by the peer itself: probe, never guess
    # its NAT's mappings as others saw them (lease ``Endpoints``): probe endpoints to punch
    # and the WireGuard endpoints that go with them; chosen once verified, never guessed
    punched: tuple[Endpoint, ...] = ()
    punched_wireguard: tuple[Endpoint, ...] = ()

    @classmethod
    def from_lease(cls, record: LeaseRecord) -> PeerCandidates:
        return cls(
            record.site, record.private_ips, record.public_ips, record.public_ip,
            record.candidates, record.endpoints.probe, record.endpoints.wireguard,
        )  # fmt: skip

    @classmethod
    def between(cls, me: LeaseRecord, peer: LeaseRecord) -> PeerCandidates:
        """``peer``'s candidates as seen from ``me``. When both sit behind NAT in
        different sites (``behind_nat``) and both run WireGuard (what a punched path
        carries), every address of ``peer`` is its NAT's and
        crosses ours too: its public addresses and candidates become punch endpoints
        (with its probe and WireGuard ports), reached only by punching, never guessed --
        an early datagram would spoil the other NAT's mapping (docs/nat.md)."""
        found = cls.from_lease(peer)
        if (
            me.site == peer.site
            or me.wireguard_port is None  # plain VXLAN: no punching, probed as before
            or peer.wireguard_port is None
            or not (behind_nat(me) and behind_nat(peer))
        ):
            return found
        addresses = (*peer.public_ips, *peer.candidates)
        probe = [Endpoint(a, peer.probe_port) for a in addresses if peer.probe_port]
        wg = [Endpoint(a, peer.wireguard_port) for a in addresses if peer.wireguard_port]
        return cls(
            peer.site, peer.private_ips, (), found.fallback, (),
            (*found.punched, *probe), (*found.punched_wireguard, *wg),
        )  # fmt: skip


def behind_nat(record: LeaseRecord) -> bool:
    """Whether the node of ``record`` has no public address of its own: its lease
    ``PublicIP`` (its interface's address, unless ``--public-ip`` was given) reaches only
    inside its site. Its public addresses, if any, are then its NAT's."""
    return is_site_local(record.public_ip)


def guess(
    me_site: str, peer: PeerCandidates, unguessable: Collection[IPv4Address] = frozenset()
) -> PeerPath | None:
    """Best guess by site: same site -> private, other site -> public, else the fallback.

    A site-local ``PublicIP`` of another site's peer is never guessed (``usable_fallback``).
    Addresses in ``unguessable`` (this node's etcd endpoints) are never guessed: a record
    naming one must not make us send overlay traffic at the etcd host. A real node on
    that address is used once probes verify the path (``choose_path``). None: nothing
    left to guess.
    """
    if peer.site == me_site:
        preferred, kind, reason = peer.private, PRIVATE, "same site"
    else:
        preferred, kind, reason = peer.public, PUBLIC, "other site"
    for address in preferred:
        if address not in unguessable:
            return PeerPath(address, kind, reason)
    fallback = usable_fallback(me_site, peer)
    if fallback is None or fallback in unguessable:
        return None
    return PeerPath(fallback, PUBLIC, "lease PublicIP")


def guess_path(
    me: LeaseRecord, peer: LeaseRecord, unguessable: Collection[IPv4Address] = frozenset()
) -> PeerPath | None:
    """``guess`` for a peer's lease (``PeerCandidates.between``: nothing is guessed
    between two nodes behind NAT)."""
    return guess(me.site, PeerCandidates.between(me, peer), unguessable)


NOT_GUESSED = "no verified path, and its addresses are etcd endpoints: not guessed"
"""Why a peer whose every candidate is an etcd endpoint's address is not programmed yet."""


def no_path_reason(me_site: str, peer: PeerCandidates) -> str:
    """Why ``peer`` has no path at all (``choose_path`` gave None), for ``/peers``."""
    if peer.site != me_site and not peer.public:
        if peer.unconfirmed:
            found = ", ".join(map(str, peer.unconfirmed))
            return f"no verified path: its public address candidates ({found}) do not answer"
        return (
            f"no path: it publishes no public address, only addresses private to site "
            f"{peer.site}; it reaches us if we have one, else give it --public-ip, "
            f"--stun-server or --cloud-metadata"
        )
    return NOT_GUESSED
