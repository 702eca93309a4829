"""The daemon's side of relays: which peers are stranded, whether their relay forwards,
and the round trips to relays this node publishes (docs/nat.md, "Relays").

The choice itself is pure (overlayd/planning/relay.py); this module owns the clock-bound
facts it needs:

* **stranded**: a peer whose direct path has not been verified by our probes for
  ``grace`` seconds (since we first saw it, or since its path stopped answering). It
  leaves the relay only once a direct path has been verified for ``upgrade_hold``
  seconds without a break (hysteresis: a flapping direct path never moves traffic).
* **silent**: a WireGuard peer the device holds with an endpoint but with no handshake
  for ``handshake_grace`` seconds (``wireguard_read``, from the device read the daemon
  makes every second while a peer is behind NAT). Our probes may verify a path that
  WireGuard's port cannot cross: behind masquerade the probe socket and the WireGuard
  port are two NAT mappings, and when two hosts of a NAT use port 51820 the NAT maps
  one of them per destination, a port no third node can see (docs/nat.md, "Relays").
  A silent peer is stranded at once (its grace time is spent). The relay keeps its
  WireGuard peer, without AllowedIPs (``apply_relays``): a handshake that completes
  there ends the silence, and the pair leaves the relay as above.
* **data-plane check**: each relayed peer is probed at its overlay address
  (``ThroughProbes``, as members check their gateway), so the probes cross the relay both
  ways. A relay whose probes stop being answered, or are never answered within
  ``through_grace``, is *broken* for that peer for ``cooldown`` seconds: the planner
  moves the pair to the next relay, or reports it with no path and why.
* **published RTTs**: the round trip of our verified path to each relay, given to
  ``rtts_to_publish`` (hysteresis) for our lease's ``RelayRTTs``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import replace
from ipaddress import IPv4Network

from overlayd.agent.path_keeper import PeerReport
from overlayd.agent.through import ThroughProbes
from overlayd.disk.node_key import NodeKey
from overlayd.planning.relay import RelayPlan, RelayRtts, rtts_to_publish
from overlayd.values.keys import PrivateKey, PublicKey
from overlayd.values.lease import LeaseRecord
from overlayd.values.wireguard import Endpoint, WgPeerState

log = logging.getLogger("overlayd.relay")

GRACE = 3.0  # seconds a peer's direct path may take to verify before a relay carries it
HANDSHAKE_GRACE = 11.0  # seconds without handshake: two WireGuard retries (5 s each) and more
UPGRADE_HOLD = 3.0  # seconds a direct path must stay verified before the relay is left
THROUGH_GRACE = 8.0  # seconds the probes through a new relay may take to be answered (a busy host)
COOLDOWN = 60.0  # seconds a relay that stopped forwarding for a peer is not used for it


class RelayKeeper:
    """Stranded peers, broken relays and our relay RTTs; ``on_change`` wakes the daemon
    (a grace time ran out, a probe through a relay changed its verdict). Each pass calls
    ``stranded``, ``judge`` and ``broken`` before it plans and ``watch`` after."""

    def __init__(
        self,
        key: NodeKey,
        on_change: Callable[[], None],
        clock: Callable[[], float],
        *,
        grace: float = GRACE,
        upgrade_hold: float = UPGRADE_HOLD,
        handshake_grace: float = HANDSHAKE_GRACE,
    ) -> None:
        self._on_change, self._clock = on_change, clock
        self._grace, self._hold, self._handshake_grace = grace, upgrade_hold, handshake_grace
        self.through = ThroughProbes(key, on_change)
        self._unverified: dict[IPv4Network, float] = {}  # peer -> since when
        self._verified: dict[IPv4Network, float] = {}  # stranded peer -> verified since
        self._stranded: set[IPv4Network] = set()
        self._unshaken: dict[IPv4Network, tuple[Endpoint, float]] = {}  # endpoint, since
        self._silent: frozenset[IPv4Network] = frozenset()
        self._carrying: dict[IPv4Network, tuple[IPv4Network, float]] = {}  # relay, since
        self._broken: dict[tuple[IPv4Network, IPv4Network], float] = {}  # -> until
        self._timers: set[float] = set()

    async def run(self) -> None:
        """Probe through the relays until cancelled."""
        await self.through.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.through.close()

    def set_key(self, key: PrivateKey) -> None:
        self.through.set_key(key)

    def stranded(
        self, peers: Iterable[IPv4Network], verified: Collection[IPv4Network]
    ) -> frozenset[IPv4Network]:
        """The ``peers`` a relay should carry now, given those whose direct path our
        probes verify (see the module docstring)."""
        now = self._clock()
        wanted = set(peers)
        verified = set(verified) - self._silent
        for gone in (self._unverified.keys() | self._stranded) - wanted:
            self._unverified.pop(gone, None)
            self._verified.pop(gone, None)
            self._stranded.discard(gone)
        for subnet in wanted:
            if subnet in verified:
                self._unverified.pop(subnet, None)
                if subnet in self._stranded:
                    since = self._verified.setdefault(subnet, now)
                    if now - since >= self._hold:
                        self._stranded.discard(subnet)
                        del self._verified[subnet]
                        log.info("direct path to %s verified: leaving its relay", subnet)
                    else:
                        self._wake_at(since + self._hold)
                continue
            self._verified.pop(subnet, None)
            since = self._unverified.setdefault(subnet, now)
            if subnet not in self._stranded:
                if subnet in self._silent or now - since >= self._grace:
                    self._stranded.add(subnet)
                else:
                    self._wake_at(since + self._grace)
        return frozenset(self._stranded)

    def wireguard_read(
        self,
        peers: Mapping[PublicKey, WgPeerState],
        records: Mapping[IPv4Network, LeaseRecord],
        wall: float,
    ) -> None:
        """What the WireGuard device holds (``peers``, read at UNIX time ``wall``): which
        peers are silent (see the module docstring); ``on_change`` when that changed. An
        empty read (the daemon makes none: no peer behind NAT) ends every silence."""
        if not peers and not self._unshaken and not self._silent:
            return  # the idle case, every second: no walk over the leases
        now = self._clock()
        by_key = {r.public_key: s for s, r in records.items() if r.public_key}
        unshaken: dict[IPv4Network, Endpoint] = {}
        for key, peer in peers.items():
            subnet, endpoint = by_key.get(key.base64), peer.config.endpoint
            if subnet is not None and endpoint is not None and not peer.has_session(wall):
                unshaken[subnet] = endpoint
        # a new endpoint is a new attempt (the device restarts the peer for it)
        self._unshaken = {
            s: (e, since) for s, (e, since) in self._unshaken.items() if unshaken.get(s) == e
        }
        for subnet, endpoint in unshaken.items():
            self._unshaken.setdefault(subnet, (endpoint, now))
        silent = frozenset(
            s for s, (_, since) in self._unshaken.items() if now - since >= self._handshake_grace
        )
        if silent == self._silent:
            return
        for subnet in sorted(silent - self._silent):
            endpoint = self._unshaken[subnet][0]
            log.warning(
                "peer %s: no WireGuard handshake with %s:%d in %.0f s (a NAT that maps "
                "WireGuard's port per destination?); a relay may carry it",
                subnet, endpoint.address, endpoint.port, self._handshake_grace,
            )  # fmt: skip
        shook = (self._silent - silent) - unshaken.keys()
        for subnet in sorted(shook & set(by_key.values())):
            log.info("peer %s: WireGuard handshake over the direct path", subnet)
        self._silent = silent
        self._on_change()

    def broken(self) -> frozenset[tuple[IPv4Network, IPv4Network]]:
        """(peer, relay) pairs whose relay stopped forwarding for the peer lately."""
        now = self._clock()
        for pair in [p for p, until in self._broken.items() if until <= now]:
            del self._broken[pair]
        return frozenset(self._broken)

    def judge(self, records: Mapping[IPv4Network, LeaseRecord]) -> None:
        """Judge what the probes through each pair's relay said so far, before the pass
        plans: a relay found not forwarding is broken for that pair (so the plan moves
        it even if something else, a lease, changed in the same pass)."""
        now = self._clock()
        for subnet, (relay, since) in list(self._carrying.items()):
            verdict = self.through.verdict(subnet)
            if verdict is False or (verdict is None and now - since >= THROUGH_GRACE):
                what = "stopped forwarding" if verdict is False else "does not forward"
                name = records[relay].node if relay in records else str(relay)
                log.warning("relay %s %s for %s; trying another", name, what, subnet)
                self._broken[(subnet, relay)] = now + COOLDOWN
                self._wake_at(now + COOLDOWN)
                del self._carrying[subnet]

    def watch(self, plan: RelayPlan, records: Mapping[IPv4Network, LeaseRecord]) -> None:
        """Probe the peers ``plan`` relays, at their overlay addresses: through the relay."""
        now = self._clock()
        chosen = {s: c.relay for s, c in plan.chosen.items()} if plan.applied else {}
        for subnet in [s for s, (relay, _) in self._carrying.items() if chosen.get(s) != relay]:
            del self._carrying[subnet]
        new = [s for s in chosen if s not in self._carrying]
        for subnet in new:
            self._carrying[subnet] = (chosen[subnet], now)
            self._wake_at(now + THROUGH_GRACE)
        # a new relay for these: what the probes said of the old one says nothing of it
        targets = {s: records[s] for s in self._carrying if s in records}
        self.through.set_targets(targets, fresh=new)

    def measured(
        self, records: Mapping[IPv4Network, LeaseRecord], reports: Iterable[PeerReport]
    ) -> dict[IPv4Network, float]:
        """Round trips (ms) of our verified paths to relays, from the path keeper's report."""
        out = {}
        for r in reports:
            record = records.get(r.subnet)
            if (
                record is not None
                and record.relay
                and r.path is not None
                and r.path.address in r.verified
                and r.rtt_ms is not None
            ):
                out[r.subnet] = r.rtt_ms
        return out

    def rtts(
        self,
        me: LeaseRecord,
        records: Mapping[IPv4Network, LeaseRecord],
        report: Callable[[Mapping[IPv4Network, LeaseRecord]], Iterable[PeerReport]],
    ) -> RelayRtts:
        """What our lease's ``RelayRTTs`` should say now (``rtts_to_publish``); ``report``
        is the path keeper's, asked about the relays only, and only when there are any."""
        relays = {s: r for s, r in records.items() if r.relay and s != me.subnet}
        if not relays:
            return ()
        return rtts_to_publish(me.relay_rtts, self.measured(relays, report(relays)))

    def _wake_at(self, when: float) -> None:
        """Wake the daemon at ``when`` (the clock's time), once per distinct time."""
        if when in self._timers:
            return
        self._timers.add(when)
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.discard(when)
            self._on_change()

        loop.call_later(max(0.0, when - self._clock()) + 0.05, fire)


def annotate(
    reports: Iterable[PeerReport],
    relayed: Mapping[IPv4Network, str],
    none: Mapping[IPv4Network, str],
) -> list[PeerReport]:
    """``/peers`` with relays: a relayed peer says its relay (``via relay R``), a
    stranded peer that no relay can carry has no path, and says why."""
    out = []
    for r in reports:
        if r.subnet in relayed:
            r = replace(r, relay=relayed[r.subnet])
        elif r.subnet in none:
            r = replace(r, path=None, rtt_ms=None, why=none[r.subnet])
        out.append(r)
    return out
