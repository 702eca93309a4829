"""Per-peer underlay choice from probe results, and reflexive public-address discovery.

Pure and deterministic: the same inputs always give the same answer, so the daemon can
replan from full state whenever it likes and ``overlayctl`` can explain a choice offline.
Times are ``time.monotonic()`` seconds, as the prober records them.

Order (issues 3 and 11): a verified private address of a same-site peer; then a verified
public address; then the lease ``PublicIP``; then a verified punched endpoint (the peer's
NAT mapping as others saw it, docs/nat.md); nothing verified -> the best guess by site
(``guess_path``'s rule; a punched endpoint is never guessed). Hysteresis:

* the current path is kept while it is verified, even if another path of the same rank
  answers faster -- RTT jitter never moves traffic;
* when the current path stops being verified (the prober counts consecutive losses), the
  first verified candidate in order takes over at once: failover waits for nothing;
* a better-ranked path replaces a healthy current one only once it is *settled*: it has
  never failed since it was first verified (a fresh candidate, e.g. at start-up), or it has
  been verified without interruption for ``ChooseParams.hold`` seconds. A path that came
  back after failing must prove itself for the hold time before traffic returns to it.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Generic, TypeVar

from overlayd.values.paths import (
    PRIVATE,
    PUBLIC,
    PUNCHED,
    PeerCandidates,
    PeerPath,
    guess,
    usable_fallback,
)

PeerId = TypeVar("PeerId", bound=Hashable)

DEFAULT_HOLD = 10.0


@dataclass(frozen=True)
class PathStats:
    """What probing one (peer, address) pair has shown so far."""

    sent: int = 0
    received: int = 0
    losses: int = 0  # consecutive unanswered probes
    last_success: float | None = None
    rtt: float | None = None  # EWMA of round-trip times, seconds
    verified_since: float | None = None  # when it (last) became verified; None: unverified
    downs: int = 0  # how often it went from verified to unverified

    @property
    def verified(self) -> bool:
        return self.verified_since is not None


@dataclass(frozen=True)
class Observation(Generic[PeerId]):
    """Our address as a peer saw it: the source of our probes in its replies."""

    address: IPv4Address
    port: int
    observer: PeerId
    observer_site: str
    count: int  # replies from this observer reporting this address and port
    first_seen: float
    last_seen: float


@dataclass(frozen=True)
class ChooseParams:
    hold: float = DEFAULT_HOLD  # seconds a recovered better path must stay verified


def _ranked(me_site: str, peer: PeerCandidates) -> list[tuple[int, IPv4Address, str]]:
    """Candidates in preference order: (rank, address, kind), each address once."""
    out: list[tuple[int, IPv4Address, str]] = []
    seen: set[IPv4Address] = set()

    def add(rank: int, address: IPv4Address, kind: str) -> None:
        if address not in seen:
            seen.add(address)
            out.append((rank, address, kind))

    if peer.site == me_site:
        for address in peer.private:
            add(0, address, PRIVATE)
    for address in (*peer.public, *peer.unconfirmed):
        add(1, address, PUBLIC)  # an unconfirmed one only ever verified, never guessed
    fallback = usable_fallback(me_site, peer)
    if fallback is not None:
        # last: the lease PublicIP, which our own leases set to a private address when the
        # node has no public one; verified, it beats guessing the same address unverified
        # (another site's site-local one is not even probed: it is not that peer's)
        add(2, fallback, PRIVATE if fallback in peer.private else PUBLIC)
    if peer.site != me_site:
        for endpoint in peer.punched:
            add(3, endpoint.address, PUNCHED)
    return out


def probe_targets(me_site: str, peer: PeerCandidates) -> tuple[IPv4Address, ...]:
    """The addresses worth probing: every candidate ``choose_path`` could pick.

    A private address of a peer in another site is not probed (unless it is the lease's
    fallback and not site-local, ``usable_fallback``): in overlapping ranges it belongs to
    some unrelated local host. Punched endpoints are not among them: they are probed only
    during a punch attempt (``overlayd/planning/punch.py``), after both NATs were opened.
    """
    return tuple(address for rank, address, _ in _ranked(me_site, peer) if rank < 3)


def direct_verified(
    me_site: str, peer: PeerCandidates, stats: Mapping[IPv4Address, PathStats]
) -> bool:
    """Whether a direct path (private, public or the lease ``PublicIP``) to ``peer`` is
    verified: then there is nothing to punch."""
    return any(
        (s := stats.get(address)) is not None and s.verified
        for rank, address, _ in _ranked(me_site, peer)
        if rank < 3
    )


def _describe(rank: int, kind: str) -> str:
    if rank == 0:
        return "verified private address, same site"
    if rank == 1:
        return "verified public address"
    if rank == 3:
        return "verified punched path through NAT"
    return f"verified lease PublicIP ({kind})"


def _path(peer: PeerCandidates, address: IPv4Address, kind: str, reason: str) -> PeerPath:
    if kind != PUNCHED:
        return PeerPath(address, kind, reason)
    ports = [e.port for e in peer.punched_wireguard if e.address == address]
    return PeerPath(address, kind, reason, ports[0] if ports else None)


def _settled(stats: PathStats, now: float, params: ChooseParams) -> bool:
    if stats.verified_since is None:
        return False
    return stats.downs == 0 or now - stats.verified_since >= params.hold


def choose_path(
    me_site: str,
    peer: PeerCandidates,
    stats: Mapping[IPv4Address, PathStats],
    current: PeerPath | None,
    now: float,
    params: ChooseParams = ChooseParams(),
    unguessable: Collection[IPv4Address] = frozenset(),
) -> PeerPath | None:
    """The underlay address to use for ``peer`` now (see the module docstring).

    ``stats`` maps the peer's probed addresses to their stats; ``current`` is the path in
    use (as this function returned it last time), None for a new peer. ``unguessable``
    addresses (our etcd endpoints) are used only once verified; None: no path (nothing
    verified, nothing that may be guessed).
    """
    ranked = _ranked(me_site, peer)
    verified = [c for c in ranked if (s := stats.get(c[1])) is not None and s.verified]
    cur = None
    if current is not None:
        cur = next((c for c in ranked if c[1] == current.address), None)
    if not verified:
        path = guess(me_site, peer, unguessable)
        if path is None:
            return None
        prefix = "no verified path"
        if cur is not None and (s := stats.get(cur[1])) is not None and s.downs:
            prefix = f"{cur[1]} stopped answering, no verified alternative"
        return PeerPath(path.address, path.kind, f"{prefix}; guess: {path.reason}")
    if cur is not None and cur in verified:
        for rank, address, kind in verified:
            if rank >= cur[0]:
                break
            if _settled(stats[address], now, params):
                reason = f"moved to better path: {_describe(rank, kind)}"
                return _path(peer, address, kind, reason)
        return _path(peer, cur[1], cur[2], _describe(cur[0], cur[2]))
    rank, address, kind = verified[0]
    reason = _describe(rank, kind)
    if cur is not None and (s := stats.get(cur[1])) is not None and s.downs:
        reason = f"failover from {cur[1]} (stopped answering): {reason}"
    return _path(peer, address, kind, reason)


@dataclass(frozen=True)
class ReflexiveParams:
    """When an address our peers see us at becomes one of our public candidates.

    ``min_observations``: replies reporting it (from one or more peers of other sites); 2,
    so one odd reply -- e.g. during a NAT gateway failover -- publishes nothing.
    ``max_age``: observations older than this (seconds) no longer count. ``limit``: at
    most this many addresses are published.
    """

    min_observations: int = 2
    max_age: float = 300.0
    limit: int = 4


def confirmed_public(
    me_site: str,
    observations: Iterable[Observation[PeerId]],
    *,
    exclude: Collection[IPv4Address],
    probe_port: int | None,
    now: float,
    params: ReflexiveParams = ReflexiveParams(),
) -> tuple[IPv4Address, ...]:
    """Our public candidates, confirmed by peers of other sites.

    Only observers in another site count (a same-site peer sees our private address).
    Addresses in ``exclude`` (our private ones) never count. With ``probe_port`` set, only
    observations that kept our probe port count: a NAT that rewrites ports (masquerade)
    does not forward unsolicited inbound traffic either, so its address is no path to us.
    Most corroborated first (distinct observers, then replies), ties by address.
    """
    observers: dict[IPv4Address, set[PeerId]] = {}
    counts: dict[IPv4Address, int] = {}
    for obs in observations:
        if (
            obs.observer_site == me_site
            or obs.address in exclude
            or (probe_port is not None and obs.port != probe_port)
            or now - obs.last_seen > params.max_age
        ):
            continue
        observers.setdefault(obs.address, set()).add(obs.observer)
        counts[obs.address] = counts.get(obs.address, 0) + obs.count
    confirmed = [a for a, n in counts.items() if n >= params.min_observations]
    confirmed.sort(key=lambda a: (-len(observers[a]), -counts[a], a))
    return tuple(confirmed[: params.limit])
