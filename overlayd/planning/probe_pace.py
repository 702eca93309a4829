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

Times are ``time.monotonic()`` seconds, as the prober's.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import TypeVar

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


def observe(
    previous: Mapping[K, PeerActivity],
    samples: Mapping[K, PeerSample],
    now: float,
    params: PaceParams,
) -> dict[K, PeerActivity]:
    """``previous`` with one sample taken at ``now`` folded in; peers not sampled keep
    what they had (a sample may miss a peer being programmed)."""
    out = dict(previous)
    for peer, sample in samples.items():
        before = previous.get(peer, PeerActivity())
        last = before.last_traffic
        if sample.idle_for is not None:
            seen = now - max(0.0, sample.idle_for)
            last = seen if last is None else max(last, seen)
        grown = (
            sample.wg_bytes is not None
            and before.wg_bytes is not None
            and sample.wg_bytes - before.wg_bytes >= params.min_bytes
        )
        if grown:
            last = now
        wg_bytes = sample.wg_bytes if sample.wg_bytes is not None else before.wg_bytes
        wg_rx = sample.wg_rx if sample.wg_rx is not None else before.wg_rx
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


def is_fast(
    activity: PeerActivity | None, changed_at: float | None, now: float, params: PaceParams
) -> bool:
    """Whether a peer is probed fast: traffic within ``traffic_hold``, or a path change
    within ``change_hold``."""
    if changed_at is not None and now - changed_at < params.change_hold:
        return True
    last = None if activity is None else activity.last_traffic
    return last is not None and now - last < params.traffic_hold


def idle_peers(
    peers: Iterable[K],
    activity: Mapping[K, PeerActivity],
    changed_at: Mapping[K, float],
    now: float,
    params: PaceParams,
) -> frozenset[K]:
    """The ``peers`` probed at the idle pace."""
    return frozenset(
        p for p in peers if not is_fast(activity.get(p), changed_at.get(p), now, params)
    )


def retain(activity: Mapping[K, PeerActivity], peers: Iterable[K]) -> dict[K, PeerActivity]:
    """``activity`` of ``peers`` only (departed peers are forgotten)."""
    keep = set(peers)
    return {p: a for p, a in activity.items() if p in keep}
