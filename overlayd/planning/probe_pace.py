"""Which peers are probed fast and which at the idle pace: the probe schedule's policy (pure).

A peer is *fast* while it carries traffic or its path recently changed: its chosen path is
probed every ``ProbeConfig.fast_interval`` (failover within ~2 s), its other candidates
every ``slow_interval``. Every other peer is *idle*: its paths are probed at the idle
intervals, a tiny fraction of the cost at thousands of peers. Traffic is measured from
what the data plane already counts, sampled every few seconds (overlayd/agent/traffic.py):

* VXLAN: the kernel stamps a permanent FDB entry each time it forwards a frame through it;
  the dump reports how long ago (``PeerSample.idle_for``). That is traffic *we send*; a
  peer sending to us is measured by that peer, which then probes fast, and what we send
  back (a TCP ack, a ping reply) is ours.
* WireGuard: the peer's rx + tx byte counters (``PeerSample.wg_bytes``). Growth of less
  than ``PaceParams.min_bytes`` between two samples is a keepalive or a handshake, not
  traffic; a counter that fell (a new wireguard-go) is a new start, not traffic.

WireGuard also *stands in* for probes of an idle peer (``vouched``): when its rx counter
grew since the last sample (keepalives count: the peer's authenticated packets arrived),
its session is fresh (a handshake within ``PaceParams.handshake_fresh``, WireGuard's own
REJECT_AFTER_TIME) and the device sends to the address we chose, that path is alive
without a probe of ours.

``Pacer`` keeps the policy's answer up to date incrementally: a sample of 5,000 peers of
which a few changed costs a few peers' work, not 5,000 (the traffic sampler passes only
the entries that moved, overlayd/agent/traffic.py).

Times are ``time.monotonic()`` seconds, as the prober's.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Set
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class PaceParams:
    """How long traffic, and a path change, keep a peer fast."""

    traffic_hold: float = 60.0  # fast this long after traffic was last seen
    change_hold: float = 30.0  # fast this long after the chosen path changed (or appeared)
    # WireGuard bytes per sample that are traffic: a keepalive is 32 bytes, a handshake
    # 148 + 92; a ping each second is ~120 bytes per second each way
    min_bytes: int = 512
    handshake_fresh: float = 180.0  # seconds: a WireGuard session older than this is dead


@dataclass(frozen=True)
class PeerSample:
    """One peer's traffic as one sample of the data plane saw it (None: not measured)."""

    idle_for: float | None = None  # VXLAN: seconds since its FDB entry last forwarded a frame
    wg_bytes: int | None = None  # WireGuard: rx + tx bytes since the device started
    wg_rx: int | None = None  # WireGuard: rx bytes alone
    wg_endpoint: IPv4Address | None = None  # where the device sends to this peer
    wg_handshake_age: float | None = None  # seconds since the last handshake (None: never)


@dataclass(frozen=True)
class PeerActivity:
    """What the samples so far say of one peer."""

    last_traffic: float | None = None  # when traffic was last seen (None: never)
    wg_bytes: int | None = None  # the counter at the last sample
    wg_rx: int | None = None  # the rx counter at the last sample


_NEVER = PeerActivity()


def observe(
    previous: Mapping[K, PeerActivity],
    samples: Mapping[K, PeerSample],
    now: float,
    params: PaceParams,
) -> dict[K, PeerActivity]:
    """One sample taken at ``now`` folded into ``previous``: the new activity of the
    sampled peers whose activity changed (every other peer keeps what it had). The work is
    per sampled peer, and an unchanged one costs no allocation: at 5,000 peers a sample
    would otherwise rebuild every peer's activity every few seconds."""
    out = {}
    for peer, sample in samples.items():
        before = previous.get(peer, _NEVER)
        last = before.last_traffic
        if sample.idle_for is not None:
            seen = now - max(0.0, sample.idle_for)
            last = seen if last is None else max(last, seen)
        if (
            sample.wg_bytes is not None
            and before.wg_bytes is not None
            and sample.wg_bytes - before.wg_bytes >= params.min_bytes
        ):
            last = now
        wg_bytes = sample.wg_bytes if sample.wg_bytes is not None else before.wg_bytes
        wg_rx = sample.wg_rx if sample.wg_rx is not None else before.wg_rx
        if (last, wg_bytes, wg_rx) != (before.last_traffic, before.wg_bytes, before.wg_rx):
            out[peer] = PeerActivity(last, wg_bytes, wg_rx)
    return out


def vouched(
    previous: Mapping[K, PeerActivity], samples: Mapping[K, PeerSample], params: PaceParams
) -> dict[K, IPv4Address]:
    """The peers whose WireGuard session proves, in this sample, that the device's
    endpoint for them reaches them: rx grew since ``previous`` (before ``observe``) and
    the last handshake is fresh. By peer, that endpoint's address."""
    out = {}
    for peer, sample in samples.items():
        before = previous.get(peer)
        rx_then = None if before is None else before.wg_rx
        if (
            sample.wg_endpoint is not None
            and sample.wg_rx is not None
            and rx_then is not None
            and sample.wg_rx > rx_then
            and sample.wg_handshake_age is not None
            and 0 <= sample.wg_handshake_age < params.handshake_fresh
        ):
            out[peer] = sample.wg_endpoint
    return out


def fast_until(
    activity: PeerActivity | None, changed_at: float | None, params: PaceParams
) -> float | None:
    """When a peer stops being probed fast: ``traffic_hold`` after its last traffic or
    ``change_hold`` after its last path change, whichever is later (None: never fast)."""
    ends = []
    if changed_at is not None:
        ends.append(changed_at + params.change_hold)
    if activity is not None and activity.last_traffic is not None:
        ends.append(activity.last_traffic + params.traffic_hold)
    return max(ends) if ends else None


def is_fast(
    activity: PeerActivity | None, changed_at: float | None, now: float, params: PaceParams
) -> bool:
    """Whether a peer is probed fast: traffic within ``traffic_hold``, or a path change
    within ``change_hold``."""
    until = fast_until(activity, changed_at, params)
    return until is not None and now < until


class Pacer(Generic[K]):
    """Which peers are idle, kept up to date at the cost of what changed (not of the peer
    count): the peers' folded samples, and per fast peer when it turns idle.

    Every peer starts fast (``changed``: it appeared, or its path or candidates changed)
    and turns idle once neither traffic nor a change keeps it fast; ``repace`` says who
    turned which way since the last call, for the prober. Times as the prober's.
    """

    __slots__ = ("_activity", "_fast", "_idle", "_params", "_woken")

    def __init__(self, params: PaceParams) -> None:
        self._params = params
        self._activity: dict[K, PeerActivity] = {}
        self._fast: dict[K, float] = {}  # fast peers: when each turns idle
        self._idle: set[K] = set()
        self._woken: set[K] = set()  # idle peers made fast since the last ``repace``

    @property
    def idle(self) -> Set[K]:
        """The peers idle as of the last ``repace``."""
        return self._idle

    def _hold(self, peer: K, until: float | None) -> None:
        if until is None or until <= self._fast.get(peer, until - 1):
            return
        self._fast[peer] = until
        if peer in self._idle:
            self._woken.add(peer)

    def changed(self, peer: K, now: float) -> None:
        """``peer`` appeared, or its chosen path or its candidates changed at ``now``."""
        self._hold(peer, now + self._params.change_hold)

    def forget(self, peer: K) -> None:
        """``peer`` is gone: its samples and pace are forgotten."""
        self._activity.pop(peer, None)
        self._fast.pop(peer, None)
        self._idle.discard(peer)
        self._woken.discard(peer)

    def sample(self, samples: Mapping[K, PeerSample], now: float) -> dict[K, IPv4Address]:
        """Fold one traffic sample of known peers in; returns ``vouched``'s answer."""
        alive = vouched(self._activity, samples, self._params)
        for peer, activity in observe(self._activity, samples, now, self._params).items():
            self._activity[peer] = activity
            self._hold(peer, fast_until(activity, None, self._params))
        return alive

    def repace(self, now: float) -> tuple[frozenset[K], frozenset[K]]:
        """``(turned_idle, turned_fast)`` since the last call, as of ``now``."""
        expired = [p for p, until in self._fast.items() if until <= now]
        for peer in expired:
            del self._fast[peer]
        woken = frozenset(p for p in self._woken if p in self._fast)
        self._woken.clear()
        self._idle -= woken
        slept = frozenset(p for p in expired if p not in self._idle)
        self._idle |= slept
        return slept, woken
