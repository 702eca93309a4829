"""Hole punching, the pure part: endpoints seen by others, and the punch attempt's phases.

Behind masquerade a node's sockets leave by its NAT's address and a port the NAT picked,
one mapping per socket: the probe socket's and the WireGuard port's differ. Peers of
other sites that hear such a node publish what they saw of it (``seen_to_publish``, the
lease's ``Seen``); the node collects that into its own ``Endpoints`` (``collect_endpoints``);
a peer with no verified direct path to it then punches: both sides open their own NAT
with low-TTL datagrams towards the other's endpoints, and only then probe them (and set
the WireGuard endpoint once a probe verifies). docs/nat.md, "Hole punching", is the
reference; the socket side is ``overlayd/probe/opener.py`` and ``overlayd/agent/punching.py``.

No clock: times are the caller's ``time.monotonic()`` seconds.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from overlayd.planning.path_choice import Observation, PeerId
from overlayd.values.lease import LeaseRecord, NodeEndpoints, SeenEndpoints
from overlayd.values.lease_rules import MAX_ENDPOINTS, MAX_SEEN, public_error
from overlayd.values.wireguard import Endpoint


def _public(endpoint: Endpoint | None) -> Endpoint | None:
    return endpoint if endpoint is not None and public_error(endpoint.address) is None else None


def _news(endpoint: Endpoint | None, known: tuple[Endpoint, ...], own: list[Endpoint]) -> bool:
    """``endpoint`` is worth telling its owner: public, not published yet, not its own."""
    return (
        endpoint is not None
        and _public(endpoint) is not None
        and endpoint not in known
        and endpoint not in own
    )


def seen_to_publish(
    me: LeaseRecord,
    peers: Mapping[IPv4Network, LeaseRecord],
    probe_sources: Mapping[IPv4Network, Endpoint],
    wireguard_sources: Mapping[IPv4Network, Endpoint],
) -> tuple[SeenEndpoints, ...]:
    """What we publish as ``Seen``: per peer of another site, where its probes and its
    WireGuard handshakes came from, while that is news to it -- a public endpoint not in
    its ``Endpoints`` yet and not its own published address and port (a 1:1 NAT or a
    public host). Once it published what we saw, the entry goes: ``Seen`` stays short.
    At most ``MAX_SEEN``, in subnet order."""
    out = []
    for subnet in sorted(set(probe_sources) | set(wireguard_sources)):
        peer = peers.get(subnet)
        if peer is None or peer.site == me.site or subnet == me.subnet:
            continue
        probe, wireguard = probe_sources.get(subnet), wireguard_sources.get(subnet)
        addresses = (peer.public_ip, *peer.public_ips)
        own_probe = [Endpoint(a, peer.probe_port) for a in addresses if peer.probe_port]
        own_wg = [Endpoint(a, peer.wireguard_port) for a in addresses if peer.wireguard_port]
        new_probe = _news(probe, peer.endpoints.probe, own_probe)
        new_wg = _news(wireguard, peer.endpoints.wireguard, own_wg)
        if new_probe or new_wg:
            out.append(SeenEndpoints(subnet, _public(probe), _public(wireguard)))
    return tuple(out[:MAX_SEEN])


def _merge(new: Iterable[Endpoint], existing: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
    fresh = sorted(set(new))
    kept = [e for e in existing if e not in fresh]
    return tuple([*fresh, *kept][:MAX_ENDPOINTS])


def collect_endpoints(
    me: LeaseRecord,
    peers: Mapping[IPv4Network, LeaseRecord],
    observations: Iterable[Observation[PeerId]],
) -> NodeEndpoints:
    """Our ``Endpoints``: what peers of other sites saw of our sockets -- their ``Seen``
    entries for our subnet, and the probe sources their replies reported -- newest first
    (sorted), then what we published before; at most ``MAX_ENDPOINTS`` per socket.
    Endpoints at our own published addresses and ports are no news to anyone and are left
    out, as are non-public ones (a same-site observer sees our private address)."""
    addresses = (me.public_ip, *me.public_ips)
    own = {Endpoint(a, p) for a in addresses for p in (me.probe_port, me.wireguard_port) if p}
    probe: set[Endpoint] = set()
    wireguard: set[Endpoint] = set()
    for peer in peers.values():
        if peer.site == me.site:
            continue
        for seen in peer.seen:
            if seen.subnet != me.subnet:
                continue
            if (e := _public(seen.probe)) is not None:
                probe.add(e)
            if (e := _public(seen.wireguard)) is not None:
                wireguard.add(e)
    for obs in observations:
        if obs.observer_site != me.site and obs.port and public_error(obs.address) is None:
            probe.add(Endpoint(obs.address, obs.port))
    return NodeEndpoints(
        _merge(probe - own, me.endpoints.probe), _merge(wireguard - own, me.endpoints.wireguard)
    )


def pick(
    endpoints: tuple[Endpoint, ...], own_port: int | None, heard: Endpoint | None
) -> tuple[Endpoint, ...]:
    """One endpoint per address of a peer's NAT to send to (in address order): the one we
    heard it from ourselves (the port its NAT really chose towards us), else one that
    kept its socket's own port (a port-preserving NAT keeps it towards us too), else the
    first published. Two observers can see two ports: the NAT maps per destination when
    two of its hosts use one port."""
    out: dict[IPv4Address, Endpoint] = {}
    for endpoint in endpoints:
        best = out.get(endpoint.address)
        if best is None or (best.port != own_port and endpoint.port == own_port):
            out[endpoint.address] = endpoint
    if heard is not None and heard.address in out:
        out[heard.address] = heard
    return tuple(out[a] for a in sorted(out))


# -- the attempt -----------------------------------------------------------------------


@dataclass(frozen=True)
class PunchParams:
    """A punch attempt's timing (seconds).

    ``open``: low-TTL openers only, no probe, so neither side's full-TTL datagram reaches
    the other's NAT before that NAT has a mapping for it (docs/nat.md, the finding);
    ``give_up``: probing time after ``open`` before the attempt fails (a symmetric NAT);
    ``retry``: a failed attempt is tried again this long after it started, longer than
    the 30 s a Linux NAT keeps an unreplied UDP entry, so a stale entry is gone by then.
    ``ttl``: the openers' IP TTL: they leave our NAT and expire before the other's.
    """

    open: float = 1.0
    give_up: float = 4.0
    retry: float = 60.0
    ttl: int = 2


class PunchPhase(enum.Enum):
    OPENING = "opening"  # openers go out; nothing is probed yet
    PROBING = "probing"  # probes go to the peer's endpoints; openers continue
    PUNCHED = "punched"  # a probe verified: the path is chosen like any other
    FAILED = "failed"  # nothing answered: left to a relay until ``retry``


@dataclass(frozen=True)
class PunchAttempt:
    """One attempt at punching to a peer: which addresses (ours and its) it is for, when
    it started, and whether a probe verified it."""

    key: Hashable  # what both sides publish: a change starts a new attempt
    started: float
    verified: bool = False


def phase(attempt: PunchAttempt, now: float, params: PunchParams) -> PunchPhase:
    """Where ``attempt`` is at ``now``."""
    if attempt.verified:
        return PunchPhase.PUNCHED
    age = now - attempt.started
    if age < params.open:
        return PunchPhase.OPENING
    if age < params.open + params.give_up:
        return PunchPhase.PROBING
    return PunchPhase.FAILED


def next_change(attempt: PunchAttempt, now: float, params: PunchParams) -> float | None:
    """When ``attempt``'s phase changes next by time alone (None: only by a probe)."""
    if attempt.verified:
        return None
    for edge in (params.open, params.open + params.give_up, params.retry):
        if now < attempt.started + edge:
            return attempt.started + edge
    return None


def step(
    attempt: PunchAttempt | None,
    key: Hashable,
    verified: bool,
    now: float,
    params: PunchParams,
) -> PunchAttempt:
    """The attempt after ``now``: a new one when the endpoints changed (both sides see the
    same lease events, so both start together) or when a failed one is due for a retry;
    ``verified``: a probe to the peer's endpoints verified."""
    if attempt is None or attempt.key != key:
        return PunchAttempt(key, now, verified)
    if not attempt.verified and now >= attempt.started + params.retry:
        # both sides started together, so both retry together: on the same grid
        rounds = (now - attempt.started) // params.retry
        return PunchAttempt(key, attempt.started + rounds * params.retry, verified)
    if verified and not attempt.verified:
        return PunchAttempt(key, attempt.started, True)
    return attempt


def give_up_reason(endpoints: tuple[Endpoint, ...], params: PunchParams) -> str:
    """Why a peer has no path after a failed attempt (for ``/peers`` and a relay)."""
    found = ", ".join(map(str, endpoints))
    return (
        f"hole punching gave up after {params.open + params.give_up:g} s: no probe reply "
        f"through its NAT at {found} (a NAT that maps each destination to another port, "
        f"e.g. masquerade with random ports, cannot be punched); needs a relay"
    )
