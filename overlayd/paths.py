"""Underlay paths to a peer: the chosen path value, a peer's candidates, and the guess
used until probes have verified something (the one rule both planners and the chooser use).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from overlayd.lease import LeaseRecord

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


def guess(me_site: str, peer: PeerCandidates) -> PeerPath:
    """Best guess by site: same site -> private, other site -> public, else the fallback."""
    if peer.site == me_site and peer.private:
        return PeerPath(peer.private[0], PRIVATE, "same site")
    if peer.site != me_site and peer.public:
        return PeerPath(peer.public[0], PUBLIC, "other site")
    if peer.fallback is None:
        raise ValueError("peer has no candidate address at all")
    return PeerPath(peer.fallback, PUBLIC, "lease PublicIP")


def guess_path(me: LeaseRecord, peer: LeaseRecord) -> PeerPath:
    """``guess`` for a peer's lease (which always has a fallback: its PublicIP)."""
    return guess(me.site, PeerCandidates.from_lease(peer))
