"""Underlay paths to a peer: the chosen path value, a peer's candidates, and the guess
used until probes have verified something (the one rule both planners and the chooser use).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from ipaddress import IPv4Address

from overlayd.values.lease import LeaseRecord

PRIVATE, PUBLIC = "private", "public"


@dataclass(frozen=True, slots=True)
class PeerPath:
    """The underlay address chosen for a peer, and why."""

    address: IPv4Address
    kind: str  # PRIVATE | PUBLIC
    reason: str


@dataclass(frozen=True)
class PeerCandidates:
    """A peer's published underlay candidates (from its lease)."""

    site: str
    private: tuple[IPv4Address, ...] = ()
    public: tuple[IPv4Address, ...] = ()
    fallback: IPv4Address | None = None  # flannel's PublicIP: the guess of last resort

    @classmethod
    def from_lease(cls, record: LeaseRecord) -> PeerCandidates:
        return cls(record.site, record.private_ips, record.public_ips, record.public_ip)


def guess(
    me_site: str, peer: PeerCandidates, unguessable: Collection[IPv4Address] = frozenset()
) -> PeerPath | None:
    """Best guess by site: same site -> private, other site -> public, else the fallback.

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
    if peer.fallback is None or peer.fallback in unguessable:
        return None
    return PeerPath(peer.fallback, PUBLIC, "lease PublicIP")


def guess_path(
    me: LeaseRecord, peer: LeaseRecord, unguessable: Collection[IPv4Address] = frozenset()
) -> PeerPath | None:
    """``guess`` for a peer's lease."""
    return guess(me.site, PeerCandidates.from_lease(peer), unguessable)


NOT_GUESSED = "no verified path, and its addresses are etcd endpoints: not guessed"
"""Why a peer whose every candidate is an etcd endpoint's address is not programmed yet."""
