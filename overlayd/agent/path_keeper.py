"""Per-peer underlay choice for the daemon: probe targets in, chosen paths out.

Glues the authenticated prober (overlayd/probe) to the planner: keeps each peer's probe
target from its lease (with its NAT's endpoints while a punch attempt runs,
overlayd/agent/punching.py), recomputes the chosen path of peers whose probe state
changed, turns reflexive observations into our confirmed public addresses (``--public-ip
auto``), says what we saw of peers behind NAT and what they saw of us (``observed``), and
paces the probes: peers with traffic (``note_traffic``, from overlayd/agent/traffic.py) or
a recent path change are probed fast, the others at the idle pace
(overlayd/planning/probe_pace.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from prometheus_client import CollectorRegistry

from overlayd.agent.metrics import Metrics
from overlayd.agent.punching import Punching
from overlayd.disk.node_key import NodeKey
from overlayd.planning.linger import Linger, linger_for
from overlayd.planning.path_choice import (
    ChooseParams,
    choose_path,
    confirmed_public,
    probe_targets,
)
from overlayd.planning.probe_pace import PaceParams, Pacer, PeerSample
from overlayd.planning.punch import PunchParams, collect_endpoints, pick, seen_to_publish
from overlayd.planning.vxlan import is_me
from overlayd.probe.prober import Prober, Send, Taker
from overlayd.probe.settings import PeerTarget, ProbeConfig
from overlayd.values.errors import ConfigError
from overlayd.values.keys import PublicKey
from overlayd.values.lease import LeaseRecord, NodeEndpoints, SeenEndpoints
from overlayd.values.paths import PeerCandidates, PeerPath, behind_nat, no_path_reason
from overlayd.values.wireguard import Endpoint


@dataclass(frozen=True)
class PeerReport:
    """What ``/peers`` (and ``overlayctl peers``) shows of one peer."""

    node: str
    subnet: IPv4Network
    site: str
    path: PeerPath | None  # None: no path at all (``why``)
    rtt_ms: float | None
    last_success: float | None  # wall-clock seconds
    verified: tuple[IPv4Address, ...]
    via: str | None = None  # the gateway this peer is reached through, if any
    why: str | None = None  # why there is no path
    relay: str | None = None  # the relay this peer is reached through, if any
    idle: bool = False  # probed at the idle pace (no traffic, no recent path change)

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "subnet": str(self.subnet),
            "site": self.site,
            "address": None if self.path is None else str(self.path.address),
            "kind": "none" if self.path is None else self.path.kind,
            "reason": self.why if self.path is None else self.path.reason,
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 3),
            "last_success": self.last_success,
            "verified": [str(a) for a in self.verified],
            "via": self.via,
            "relay": self.relay,
            "probing": "idle" if self.idle else "fast",
        }


class PathKeeper:
    """Chosen underlay path per peer subnet, verified by probes where peers support them."""

    def __init__(
        self,
        key: NodeKey,
        config: ProbeConfig,
        params: ChooseParams | None = None,
        pace: PaceParams | None = None,
        punching: Punching | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """``metrics``: where path changes and probe RTTs are counted (default: a registry
        of its own, which nobody scrapes)."""
        self.metrics = metrics or Metrics(CollectorRegistry())
        self.prober: Prober[IPv4Network] = Prober(
            key.private, config, self._changed, self.metrics.probe_rtt
        )
        # without openers (no raw socket): punching works only through NATs that let
        # the first datagram in
        self.punching = punching or Punching(PunchParams(), None, time.monotonic)
        self._on_change: Callable[[IPv4Network | None], None] | None = None  # from ``start``
        self._loop: asyncio.AbstractEventLoop | None = None
        # the addresses we left, still accepted from the peer (overlayd/planning/linger.py)
        self.linger = Linger(linger_for(config.slow_interval, config.jitter, config.timeout))
        self.unguessable: frozenset[IPv4Address] = frozenset()  # etcd endpoints: from ``start``
        self._params = params or ChooseParams(hold=config.stable_after)
        self._base: dict[IPv4Network, PeerTarget] = {}  # from the lease, without punching
        self._targets: dict[IPv4Network, PeerTarget] = {}
        self._targets_changed = False
        self._wireguard_seen: dict[IPv4Network, Endpoint] = {}  # our device's learned ones
        self._natted: set[IPv4Network] = set()  # peers of other sites behind NAT
        self.paths: dict[IPv4Network, PeerPath] = {}
        self._pathless: dict[IPv4Network, str] = {}  # peers with no path: why
        self._pacer: Pacer[IPv4Network] = Pacer(pace or PaceParams())  # told to the prober

    def _changed(self, peer: IPv4Network | None) -> None:
        if self._on_change is not None:
            self._on_change(peer)

    @property
    def port(self) -> int:
        """The bound probe port (once started)."""
        return self.prober.port

    @property
    def lingering(self) -> Mapping[IPv4Network, IPv4Address]:
        """Per peer, the address we left that still lingers."""
        return self.linger.addresses

    async def start(
        self,
        on_change: Callable[[IPv4Network | None], None],
        unguessable: frozenset[IPv4Address] = frozenset(),
    ) -> None:
        """Bind the probe port and start probing; ``on_change`` and ``unguessable`` as
        ``PathKeeping.start``'s; ``ConfigError`` if the port cannot be bound."""
        self._on_change, self.unguessable = on_change, unguessable
        self._loop = asyncio.get_running_loop()
        self.punching.start(self._loop, self._changed)
        try:
            await self.prober.start()
        except OSError as exc:
            raise ConfigError(
                f"cannot listen for path probes on UDP port {self.prober.config.port}: "
                f"{exc.strerror}",
                hint="is another overlayd running in this network namespace? see --probe-port",
            ) from None

    async def close(self) -> None:
        self.punching.close()
        await self.prober.close()

    def set_key(self, key: NodeKey) -> None:
        """Probe and answer with ``key`` from now on (a rotation)."""
        self.prober.set_key(key.private)

    def lease_changed(self, me: LeaseRecord, subnet: IPv4Network, peer: LeaseRecord | None) -> None:
        """Keep the probe target of ``subnet`` in step with its lease (None: gone).

        A record of ours under another subnet (our old one, after we moved) is us, not a
        peer: never probed nor reported.
        """
        if peer is not None and is_me(me, subnet, peer):
            peer = None
        target = None
        if peer is not None and peer.public_key and peer.probe_port:
            target = PeerTarget(
                PublicKey.from_base64(peer.public_key),
                probe_targets(me.site, PeerCandidates.between(me, peer)),
                peer.site,
                peer.probe_port,
            )
        if peer is not None and peer.site != me.site and behind_nat(peer):
            self._natted.add(subnet)
        else:
            self._natted.discard(subnet)
        if self._base.get(subnet) != target:
            if target is None:
                self._base.pop(subnet, None)
                self._targets.pop(subnet, None)
                self._unpace(subnet)
            else:
                self._base[subnet] = self._targets[subnet] = target
                self._pacer.changed(subnet, time.monotonic())  # new candidates: verify fast
            self._targets_changed = True
        if peer is None:
            self.paths.pop(subnet, None)
            self._pathless.pop(subnet, None)
            self._wireguard_seen.pop(subnet, None)
            self.punching.forget(subnet)
            self.linger.forget(subnet)
            self._unpace(subnet)
        if (peer is not None and any(s.subnet == me.subnet for s in peer.seen)) or (
            self.prober.heard_from(subnet) or subnet in self._wireguard_seen
        ):
            self._changed(None)  # what we saw of it, or it of us: ``observed`` may change

    def _candidates(
        self, me: LeaseRecord, subnet: IPv4Network, peer: LeaseRecord
    ) -> PeerCandidates:
        """``peer``'s candidates, with one endpoint of its NAT per address for each socket
        (``punch.pick``: what we heard from it first)."""
        found = PeerCandidates.between(me, peer)
        if not found.punched:
            return found
        heard = self.prober.probe_sources().get(subnet)
        wireguard: tuple[Endpoint, ...] = ()
        if behind_nat(me):  # else it dials in: WireGuard learns its port from the handshake
            learned = self._wireguard_seen.get(subnet)
            wireguard = pick(found.punched_wireguard, peer.wireguard_port, learned)
        return replace(
            found,
            punched=pick(found.punched, peer.probe_port, heard),
            punched_wireguard=wireguard,
        )

    def _probe_port(self) -> int:
        return self.prober.port if self._loop is not None else self.prober.config.port

    def _punch(
        self, me: LeaseRecord, subnet: IPv4Network, peer: LeaseRecord, current: PeerPath | None
    ) -> str | None:
        """Bring ``subnet``'s target in step with its punch attempt; the no-path reason."""
        base = self._base.get(subnet)
        if base is None:
            return None
        punch = self.punching.update(
            me,
            subnet,
            peer,
            self._candidates(me, subnet, peer),
            self.prober.stats(subnet),
            current,
            self._probe_port(),
        )
        target = base
        if punch is not None and punch.endpoints:
            target = replace(base, punched=punch.endpoints, punch_from=punch.probe_from)
        if self._targets.get(subnet) != target:
            self._targets[subnet] = target
            self._targets_changed = True
        return None if punch is None else punch.reason

    def recompute(
        self,
        me: LeaseRecord,
        peers: Mapping[IPv4Network, LeaseRecord],
        which: Iterable[IPv4Network],
    ) -> set[IPv4Network]:
        """Rechoose the paths of ``which`` peers; returns those whose path, or whose
        lingering address, changed."""
        which = list(which)
        punch_reasons: dict[IPv4Network, str | None] = {}
        for subnet in which:
            peer = peers.get(subnet)
            if peer is not None and not is_me(me, subnet, peer):
                punch_reasons[subnet] = self._punch(me, subnet, peer, self.paths.get(subnet))
        repace = self._targets_changed  # new or changed candidates are verified fast
        if self._targets_changed:
            self.prober.set_peers(self._targets)
            self._targets_changed = False
        now = time.monotonic()
        changed = self.linger.expire(which, now)
        for subnet in which:
            peer = peers.get(subnet)
            if peer is None or is_me(me, subnet, peer):
                self.paths.pop(subnet, None)
                self._pathless.pop(subnet, None)
                self.linger.forget(subnet)
                continue
            current = self.paths.get(subnet)
            stats = self.prober.stats(subnet)
            candidates = self._candidates(me, subnet, peer)
            path = choose_path(
                me.site, candidates, stats, current, now, self._params, self.unguessable
            )
            address = None if path is None else path.address
            old = None if current is None else current.address
            if address != old:
                self.metrics.path_changed(path)
                changed.add(subnet)
                probed = subnet in self._targets
                if probed:  # a peer without probes has no pace
                    self._pacer.changed(subnet, now)
                self.prober.set_chosen(subnet, address if probed else None)
                published = (peer.public_ip, *peer.public_ips, *peer.private_ips)
                if self.linger.left(subnet, old, address, published, now) and self._loop:
                    # wake up when it expires, so the ingress filter drops it then
                    self._loop.call_later(self.linger.seconds + 0.1, self._changed, subnet)
            if path is None:
                self.paths.pop(subnet, None)
                why = punch_reasons.get(subnet)
                self._pathless[subnet] = why or no_path_reason(me.site, candidates)
            else:
                self.paths[subnet] = path
                self._pathless.pop(subnet, None)
        if changed or repace:
            self._repace(now)
        return changed

    def note_traffic(self, samples: Mapping[IPv4Network, PeerSample]) -> None:
        """One sample of the peers' traffic (overlayd/agent/traffic.py): re-pace the probes,
        and let live WireGuard sessions stand in for idle peers' probes."""
        now = time.monotonic()
        alive = self._pacer.sample({s: x for s, x in samples.items() if s in self._targets}, now)
        self._repace(now)
        for subnet, address in alive.items():
            path = self.paths.get(subnet)
            if path is not None and path.address == address:
                self.prober.vouch(subnet, address)

    def _unpace(self, subnet: IPv4Network) -> None:
        """Forget ``subnet``'s pace: should it come back, it starts fast, as a new peer."""
        self._pacer.forget(subnet)
        self.prober.pace(fast=(subnet,))

    def _repace(self, now: float) -> None:
        """Tell the prober which peers turned idle, or fast, since the last time."""
        slept, woken = self._pacer.repace(now)
        if slept or woken:
            self.prober.pace(idle=slept, fast=woken)

    def share_socket(self, taker: Taker) -> Send:
        """The probe socket for one other protocol (``Prober.share_socket``)."""
        return self.prober.share_socket(taker)

    def verified(self) -> set[IPv4Network]:
        """Peers whose chosen path probes have verified."""
        out = set()
        for subnet, path in self.paths.items():
            stats = self.prober.stats(subnet).get(path.address)
            if stats is not None and stats.verified:
                out.add(subnet)
        return out

    def wireguard_seen(self, endpoints: Mapping[PublicKey, Endpoint]) -> None:
        """The endpoints our WireGuard device learned for its peers (by key, read back
        from the device): what we publish as seen of peers behind NAT."""
        by_key = {t.public_key: s for s, t in self._base.items()}
        seen = {by_key[k]: e for k, e in endpoints.items() if k in by_key}
        if seen != self._wireguard_seen:
            self._wireguard_seen = seen
            self._changed(None)

    def nat_peers(self) -> bool:
        return bool(self._natted)

    def observed(
        self, me: LeaseRecord, peers: Mapping[IPv4Network, LeaseRecord]
    ) -> tuple[NodeEndpoints, tuple[SeenEndpoints, ...]]:
        """Our ``Endpoints`` (what peers of other sites saw of our sockets) and our
        ``Seen`` (what we saw of theirs, while it is news to them): planning/punch.py."""
        own = collect_endpoints(me, peers, self.prober.observations())
        seen = seen_to_publish(me, peers, self.prober.probe_sources(), self._wireguard_seen)
        return own, seen

    def public_addresses(self, me: LeaseRecord) -> tuple[IPv4Address, ...]:
        """Our public addresses as peers in other sites confirmed them (sorted)."""
        found = confirmed_public(
            me.site,
            self.prober.observations(),
            exclude=me.private_ips,
            probe_port=me.probe_port,
            now=time.monotonic(),
        )
        return tuple(sorted(found))

    def report(
        self, peers: Mapping[IPv4Network, LeaseRecord], via: Mapping[IPv4Network, str]
    ) -> list[PeerReport]:
        """One report per peer, sorted by node name (those with no path say why);
        ``via``: peers reached through a gateway (the gateway's node name)."""
        out = [
            PeerReport(peers[s].node, s, peers[s].site, None, None, None, (), why=why)
            for s, why in self._pathless.items()
            if s in peers
        ]
        wall_offset = time.time() - time.monotonic()
        for subnet, path in self.paths.items():
            peer = peers.get(subnet)
            if peer is None:
                continue
            stats = self.prober.stats(subnet)
            mine = stats.get(path.address)
            out.append(
                PeerReport(
                    node=peer.node,
                    subnet=subnet,
                    site=peer.site,
                    path=path,
                    rtt_ms=None if mine is None or mine.rtt is None else mine.rtt * 1000,
                    last_success=None
                    if mine is None or mine.last_success is None
                    else mine.last_success + wall_offset,
                    verified=tuple(sorted(a for a, s in stats.items() if s.verified)),
                    via=via.get(subnet),
                    idle=subnet in self._pacer.idle,
                )
            )
        return sorted(out, key=lambda r: (r.node, r.subnet))
