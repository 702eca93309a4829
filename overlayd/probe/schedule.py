"""The prober's paths and their timers: one ``ProbedPath`` per (peer, address), the heap
of when each is next probed or next checked for having settled, and each path's interval
(``base_interval``: fast for the chosen path, slow for the others, both stretched for an
idle peer).

No sockets, no clock: times are given by the caller (``Prober``, on its monotonic clock).
Superseded timers are not removed from the heap when a path is rescheduled or dropped;
they are skipped when due and compacted away once they outnumber the live ones, so
memory stays bounded by the peer set.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from enum import IntEnum
from ipaddress import IPv4Address
from typing import Generic

from overlayd.planning.path_choice import PathStats, PeerId
from overlayd.probe.settings import ProbeConfig
from overlayd.values.keys import PublicKey


class ProbedPath(Generic[PeerId]):
    """Mutable stats of one (peer, address); snapshot with ``stats()``.

    ``live`` turns False when the path leaves the peer set (its timers are then skipped);
    ``fast`` says it is the path the daemon uses; ``due`` is when its next probe goes out.
    """

    __slots__ = (
        "address",
        "downs",
        "due",
        "fast",
        "key",
        "last_success",
        "live",
        "losses",
        "peer",
        "port",
        "received",
        "rtt",
        "sent",
        "sockaddr",
        "verified_since",
    )

    def __init__(self, peer: PeerId, address: IPv4Address, key: PublicKey, port: int) -> None:
        self.peer = peer
        self.address = address
        self.key = key
        self.port = port
        self.sockaddr = (str(address), port)  # as the socket takes it: formatted once
        self.live = True
        self.fast = False
        self.due = 0.0
        self.sent = self.received = self.losses = self.downs = 0
        self.last_success: float | None = None
        self.rtt: float | None = None
        self.verified_since: float | None = None

    def stats(self) -> PathStats:
        return PathStats(
            self.sent,
            self.received,
            self.losses,
            self.last_success,
            self.rtt,
            self.verified_since,
            self.downs,
        )

    def record_reply(self, now: float, rtt: float, alpha: float) -> bool:
        """Count a reply that took ``rtt`` seconds (EWMA weight ``alpha``); True if that
        verified the path."""
        self.received += 1
        self.losses = 0
        self.last_success = now
        self.rtt = rtt if self.rtt is None else (1 - alpha) * self.rtt + alpha * rtt
        if self.verified_since is not None:
            return False
        self.verified_since = now
        return True

    def record_vouch(self, now: float) -> None:
        """Count proof of life from elsewhere (a WireGuard session on this path) as a
        success, without a probe: no RTT sample, and only for a verified path."""
        if self.verified_since is not None:
            self.losses = 0
            self.last_success = now

    def record_loss(self, threshold: int) -> bool:
        """Count an unanswered probe; True if that unverified the path (``threshold``
        consecutive losses)."""
        self.losses += 1
        if self.verified_since is None or self.losses < threshold:
            return False
        self.verified_since = None
        self.downs += 1
        return True


def base_interval(config: ProbeConfig, chosen: bool, idle: bool) -> float:
    """Seconds between two probes of a path, before jitter: ``chosen`` is the path the
    daemon uses, ``idle`` says its peer is idle (overlayd/planning/probe_pace.py)."""
    if idle:
        return config.idle_interval if chosen else config.idle_slow_interval
    return config.fast_interval if chosen else config.slow_interval


def slack(tick: float) -> float:
    """How early a timer may be served: a quarter of a tick, so that what falls due just
    after a tick (a probe timeout, sent at a tick and ``timeout`` long) is served at that
    tick rather than keeping the next one for itself."""
    return tick / 4


def tick_at(due: float, tick: float) -> float:
    """The tick at which a timer ``due`` then is served: the first multiple of ``tick``
    not before ``due - slack(tick)`` (``tick`` 0: ``due`` itself).

    Timers are served on a grid so that one wake-up serves every timer of a tick: at
    5,000 peers the probes and timeouts due each second are hundreds, the wake-ups at
    most ``1 / tick``, and a wake-up costs more than a probe. A timer is served at most
    one tick late, or a quarter of a tick early.
    """
    if tick <= 0:
        return due
    return math.ceil((due - slack(tick)) / tick) * tick


class Timer(IntEnum):
    """What a heap entry is due for."""

    PROBE = 0  # send the path's next probe
    STABLE = 1  # check whether a recovered path has stayed verified long enough


class Timers(Generic[PeerId]):
    """A min-heap of (due, tie-break, kind, path), earliest first."""

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer, ProbedPath[PeerId]]] = []
        self._seq = 0

    def schedule(self, path: ProbedPath[PeerId], due: float, kind: Timer = Timer.PROBE) -> None:
        """Add a timer; a PROBE timer supersedes the path's earlier one (``path.due``)."""
        if kind == Timer.PROBE:
            path.due = due
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, kind, path))

    def next_due(self) -> float | None:
        """When the earliest timer is due, None without timers."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, limit: float) -> Iterator[tuple[float, Timer, ProbedPath[PeerId]]]:
        """Remove and yield each timer due by ``limit`` whose path is live and which was not
        superseded, earliest first; timers scheduled meanwhile are served too if due."""
        heap = self._heap
        while heap and heap[0][0] <= limit:
            due, _, kind, path = heapq.heappop(heap)
            if not path.live:
                continue
            if kind == Timer.PROBE and due != path.due:
                continue  # superseded by a reschedule
            yield due, kind, path

    def compact(self, live_paths: int) -> None:
        """Drop superseded entries once they outnumber live ones (bounded memory)."""
        if len(self._heap) > 2 * live_paths + 64:
            self._heap = [
                e for e in self._heap if e[3].live and (e[2] == Timer.STABLE or e[0] == e[3].due)
            ]
            heapq.heapify(self._heap)
