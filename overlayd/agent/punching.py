"""Hole punching for the path keeper: one attempt per peer behind NAT, its openers and
its wake-ups (the pure rules are overlayd/planning/punch.py, the reference docs/nat.md).

For a peer of another site that publishes ``Endpoints`` (its NAT's mappings as others saw
them), runs WireGuard as we do, and to which no direct path is verified, an attempt
starts when the endpoints on either side change -- both sides see the same lease events
from etcd, so both start within milliseconds of each other. While it is opening and
probing, every ``OPENER_INTERVAL`` low-TTL openers leave from our probe port towards its
probe endpoints and from our WireGuard port towards its WireGuard endpoints; from
``open`` seconds on, the prober probes its probe endpoints (``PeerTarget.punched``). A
reply verifies the punched path; none within ``give_up`` fails the attempt, with the
reason a relay takes, until the retry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from overlayd.planning.path_choice import PathStats, direct_verified
from overlayd.planning.punch import (
    PunchAttempt,
    PunchParams,
    PunchPhase,
    give_up_reason,
    next_change,
    phase,
    step,
)
from overlayd.probe.opener import Opener
from overlayd.values.lease import LeaseRecord
from overlayd.values.paths import PUNCHED, PeerCandidates, PeerPath
from overlayd.values.wireguard import Endpoint

log = logging.getLogger("overlayd.punch")

OPENER_INTERVAL = 0.2
"""Seconds between rounds of openers while an attempt opens and probes."""


@dataclass(frozen=True)
class Punch:
    """What an attempt asks of the prober for one peer, and the no-path reason."""

    endpoints: tuple[Endpoint, ...]  # its probe endpoints, probed from ``probe_from``
    probe_from: float
    reason: str | None  # why there is no path yet (None: punched)


def wants_punch(
    me: LeaseRecord,
    peer: LeaseRecord,
    candidates: PeerCandidates,
    stats: Mapping[IPv4Address, PathStats],
    current: PeerPath | None,
) -> bool:
    """Punch to ``peer``: another site, its NAT's endpoints known, WireGuard on both
    sides (a punched path carries WireGuard only), and no verified direct path (or the
    punched one in use)."""
    if peer.site == me.site or not candidates.punched:
        return False
    if peer.wireguard_port is None or me.wireguard_port is None:
        return False
    if current is not None and current.kind == PUNCHED:
        return True
    return not direct_verified(me.site, candidates, stats)


def _addresses(record: LeaseRecord) -> Hashable:
    """What a node publishes of where it can be reached across sites: a change on
    either side of a pair starts a new attempt on both."""
    return (record.public_ips, record.candidates, record.endpoints)


class Punching:
    """The attempts of the current peers (``update``), their openers and wake-ups."""

    def __init__(
        self,
        params: PunchParams,
        opener: Opener | None,
        clock: Callable[[], float],
    ) -> None:
        self.params, self._opener, self._clock = params, opener, clock
        self._attempts: dict[IPv4Network, PunchAttempt] = {}
        self._opening: dict[IPv4Network, tuple[tuple[Endpoint, ...], tuple[Endpoint, ...]]] = {}
        self._ports = (0, 0)  # our probe and WireGuard ports
        self._wake: Callable[[IPv4Network], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticking = False
        self._wakes: dict[IPv4Network, float] = {}  # the wake-up set per peer: one each

    def start(self, loop: asyncio.AbstractEventLoop, wake: Callable[[IPv4Network], None]) -> None:
        """Wake-ups (a phase ended) go to ``wake(peer)`` on ``loop``."""
        self._loop, self._wake = loop, wake

    def close(self) -> None:
        self._attempts.clear()
        self._opening.clear()
        if self._opener is not None:
            self._opener.close()

    def forget(self, subnet: IPv4Network) -> None:
        self._attempts.pop(subnet, None)
        self._opening.pop(subnet, None)
        self._wakes.pop(subnet, None)

    def update(
        self,
        me: LeaseRecord,
        subnet: IPv4Network,
        peer: LeaseRecord,
        candidates: PeerCandidates,
        stats: Mapping[IPv4Address, PathStats],
        current: PeerPath | None,
        probe_port: int,
    ) -> Punch | None:
        """The attempt for ``peer`` now (None: nothing to punch); ``candidates``: its
        candidates with one endpoint per address to probe (``punch.pick``). Openers go
        to every endpoint it published."""
        if not wants_punch(me, peer, candidates, stats, current):
            self.forget(subnet)
            return None
        now = self._clock()
        ours = candidates.punched
        verified = any((s := stats.get(e.address)) is not None and s.verified for e in ours)
        before = self._attempts.get(subnet)
        key = (_addresses(peer), _addresses(me))
        attempt = step(before, key, verified, now, self.params)
        self._attempts[subnet] = attempt
        where = phase(attempt, now, self.params)
        if before is None or before.started != attempt.started:
            log.info("punching to %s (%s) at %s", peer.node, subnet, ", ".join(map(str, ours)))
        elif where is PunchPhase.PUNCHED and not before.verified:
            log.info("punched to %s (%s) in %.1f s", peer.node, subnet, now - attempt.started)
        self._ports = (probe_port, me.wireguard_port or 0)
        was_open = subnet in self._opening
        if where in (PunchPhase.OPENING, PunchPhase.PROBING):
            self._opening[subnet] = (candidates.punched, candidates.punched_wireguard)
            self._tick()
        else:
            self._opening.pop(subnet, None)
        self._wake_at(subnet, next_change(attempt, now, self.params), now)
        probe_from = attempt.started + self.params.open
        if where is PunchPhase.FAILED:
            if was_open:
                log.info("punching to %s (%s) failed: no reply", peer.node, subnet)
            return Punch((), probe_from, give_up_reason(ours, self.params))
        if where is PunchPhase.PUNCHED:
            return Punch(ours, probe_from, None)
        age = now - attempt.started
        return Punch(ours, probe_from, f"punching through its NAT ({age:.1f} s so far)")

    def _wake_at(self, subnet: IPv4Network, when: float | None, now: float) -> None:
        """Wake the daemon for ``subnet`` at ``when`` (once: every pass asks again)."""
        if when is None or self._loop is None or self._wakes.get(subnet) == when:
            return
        self._wakes[subnet] = when
        self._loop.call_later(max(0.0, when - now) + 0.01, self._woken, subnet, when)

    def _woken(self, subnet: IPv4Network, when: float) -> None:
        if self._wakes.get(subnet) == when and self._wake is not None:
            del self._wakes[subnet]
            self._wake(subnet)

    def _tick(self) -> None:
        """One round of openers now, and the next in ``OPENER_INTERVAL`` while any
        attempt is opening or probing."""
        if self._ticking or self._loop is None:
            return
        self._ticking = True
        self._loop.call_soon(self._round)

    def _round(self) -> None:
        now = self._clock()
        for subnet in list(self._opening):
            attempt = self._attempts.get(subnet)
            if attempt is None or phase(attempt, now, self.params) not in (
                PunchPhase.OPENING,
                PunchPhase.PROBING,
            ):
                del self._opening[subnet]
        if not self._opening or self._loop is None:
            self._ticking = False
            return
        if self._opener is not None:
            probe_port, wireguard_port = self._ports
            for probes, wireguards in self._opening.values():
                for endpoint in probes:
                    self._opener.send(probe_port, endpoint)
                for endpoint in wireguards:
                    self._opener.send(wireguard_port, endpoint)
        self._loop.call_later(OPENER_INTERVAL, self._round)
