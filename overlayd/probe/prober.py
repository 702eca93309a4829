"""The prober: probes every candidate address of every peer and answers peers' probes.

One UDP socket (default port 8473) and one timer on the daemon's event loop (asyncio or
uvloop), set for the next tick at which something is due: timers are served on a grid of
``tick`` seconds (``schedule.tick_at``), so the hundreds of probes and timeouts due each
second at 5,000 peers cost at most ``1 / tick`` wake-ups. Each (peer, address) pair is a
*path* with its own schedule: the path the daemon currently uses is probed every
``fast_interval`` so its death is noticed within about ``loss_threshold`` intervals plus
``timeout``; every other path every ``slow_interval``; the paths of the peers the daemon
calls idle (``pace``) at the idle intervals (``schedule.base_interval``). Intervals are
jittered and new paths start spread over ``initial_spread``, so 1,000 peers never probe in
one burst.

The prober does not decide anything: it keeps stats (``PathStats``) and reflexive
observations (``Observation``) and calls ``on_change`` when something the choice depends
on changed materially -- a path became verified or unverified, a recovered path has been
verified for ``stable_after`` seconds, or a peer reported a new address for us -- never for
a mere RTT sample. ``on_change(peer)`` names the peer whose paths changed, or passes None
for a change of our reflexive addresses; the daemon then re-chooses that peer's path with
``choose.choose_path`` (or all of them) and replans.

Memory is bounded by the peer set: stats and observations (at most ``MAX_OBSERVED`` per
peer) live only while the peer does, outstanding probes expire after ``timeout``, and
the codec's per-peer replay caches are bounded and pruned with the peer set.

This module owns the socket, the loop and what is sent and answered; the paths and their
timers are ``schedule``'s, the reflexive observations ``observed``'s, the format ``wire``'s.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from ipaddress import IPv4Address
from typing import Any, Generic, cast

from overlayd.planning.path_choice import Observation, PathStats, PeerId
from overlayd.probe.observed import MAX_OBSERVED, Observations
from overlayd.probe.schedule import ProbedPath, Timer, Timers, base_interval, slack, tick_at
from overlayd.probe.settings import PeerTarget, ProbeConfig, ProbeCounters
from overlayd.probe.wire import (
    Probe,
    ProbeCodec,
    ProbeError,
    Reject,
)
from overlayd.runtime.logs import Throttle
from overlayd.values.keys import PrivateKey, PublicKey
from overlayd.values.wireguard import Endpoint

log = logging.getLogger("overlayd.probe")

_REJECT_LOG_EVERY = 10.0  # seconds between log lines per rejection reason
_SOCKET_BUFFER = 1 << 20  # bytes: absorbs the reply burst of a thousand peers


Taker = Callable[[bytes, tuple[str | Any, int]], bool]
"""Gets a datagram (and its source) before the prober; True: it was its own."""
Send = Callable[[bytes, tuple[str, int]], None]
"""Sends a datagram from the probe socket."""


def _no_rtt(_site: str, _seconds: float) -> None:
    """RTTs nobody asked for."""


class Prober(asyncio.DatagramProtocol, Generic[PeerId]):
    """Probes peers' candidate addresses and answers their probes (see module docstring)."""

    def __init__(
        self,
        key: PrivateKey,
        config: ProbeConfig | None = None,
        on_change: Callable[[PeerId | None], None] | None = None,
        on_rtt: Callable[[str, float], None] | None = None,
    ) -> None:
        """``on_change`` as the module docstring says; ``on_rtt(site, seconds)`` for each
        answered probe (the RTT histogram of overlayd/agent/metrics.py)."""
        self.config = config = config or ProbeConfig()
        self.codec = ProbeCodec(key, window=config.window, replay_capacity=config.replay_capacity)
        self.counters = ProbeCounters()
        self._on_change = on_change
        self._on_rtt = on_rtt or _no_rtt
        self._clock = time.monotonic  # the clock of every time in PathStats/Observation
        self._rng = random.Random()
        self._transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._alarm: asyncio.TimerHandle | None = None  # the one timer: the next tick due
        self._alarm_at = 0.0
        self._peers: dict[PeerId, PeerTarget] = {}
        self._keys: dict[PublicKey, PeerId] = {}
        self._sources: dict[PeerId, Endpoint] = {}  # where each peer's probes come from
        self._heard: dict[PeerId, tuple[Endpoint, ...]] = {}  # its latest distinct sources
        self._paths: dict[tuple[PeerId, IPv4Address], ProbedPath[PeerId]] = {}
        self._chosen: dict[PeerId, IPv4Address] = {}
        self._idle: set[PeerId] = set()  # probed at the idle pace
        self._outstanding: dict[bytes, tuple[ProbedPath[PeerId], float]] = {}
        self._deadlines: deque[tuple[float, bytes]] = deque()  # FIFO: timeout is constant
        self._timers: Timers[PeerId] = Timers()
        self._observed: Observations[PeerId] = Observations()
        self._reject_log = Throttle(_REJECT_LOG_EVERY, self._clock)
        self._taker: Taker | None = None
        self._addrs: dict[tuple[str | Any, int], Endpoint] = {}  # ``_observed_as``'s

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the socket and start probing; ``OSError`` if the port cannot be bound."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            sock.bind((str(self.config.bind), self.config.port))
            sock.setblocking(False)
            # uvloop calls connection_made later (call_soon): keep the transport returned here
            self._transport, _ = await loop.create_datagram_endpoint(lambda: self, sock=sock)
        except OSError:
            sock.close()
            raise
        self._loop = loop
        self._arm()

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        assert self._transport is not None, "not started"
        port: int = self._transport.get_extra_info("sockname")[1]
        return port

    async def close(self) -> None:
        self._loop = None
        if self._alarm is not None:
            self._alarm.cancel()
            self._alarm = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def share_socket(self, taker: Taker) -> Send:
        """Let one other protocol use our socket, so that it sees the probe port's NAT
        mapping (STUN, overlayd/discovery/stun.py): ``taker`` sees each datagram first and
        returns True for its own (probe datagrams begin with "OVPR", no STUN message
        does); returns the socket's send. Once started."""
        self._taker = taker

        def send(data: bytes, addr: tuple[str, int]) -> None:
            if self._transport is None:
                raise OSError("the probe socket is closed")
            self._transport.sendto(data, addr)

        return send

    # -- what the daemon tells us ----------------------------------------------------

    def set_peers(self, peers: Mapping[PeerId, PeerTarget]) -> None:
        """Replace the set of peers; stats of unchanged (peer, address, key) pairs survive.

        A peer whose key or port changed starts over: its old stats described another
        identity. New paths get their first probe within ``initial_spread`` seconds.
        """
        now = self._clock()
        old = self._peers
        self._peers = dict(peers)
        self._keys = {t.public_key: p for p, t in self._peers.items()}
        wanted: set[tuple[PeerId, IPv4Address]] = set()
        for peer, target in self._peers.items():
            before = old.get(peer)
            if before is not None and (
                before.public_key != target.public_key or before.port != target.port
            ):
                self._drop_peer_paths(peer)
            for address, (port, not_before) in target.probed().items():
                wanted.add((peer, address))
                known = self._paths.get((peer, address))
                if known is not None and known.port == port:
                    continue
                if known is not None:  # a punched endpoint whose port changed: a new path
                    known.live = False
                path = ProbedPath(peer, address, target.public_key, port)
                path.fast = self._chosen.get(peer) == address
                self._paths[(peer, address)] = path
                # the path in use first: when a peer's key changed (a rotation) it is
                # verified again before any other, so the choice does not wander
                spread = 0.0 if path.fast else self.config.initial_spread
                self._timers.schedule(path, max(now + self._rng.uniform(0, spread), not_before))
        for key in [k for k in self._paths if k not in wanted]:
            self._paths.pop(key).live = False
        for peer in [p for p in self._chosen if p not in self._peers]:
            del self._chosen[peer]
        self._idle.intersection_update(self._peers)
        for peer in [p for p in self._sources if p not in self._peers]:
            del self._sources[peer]
            self._heard.pop(peer, None)
        self._observed.retain(self._peers)
        self.codec.retain(self._keys.keys())
        self._timers.compact(len(self._paths))
        self._arm()

    def set_key(self, key: PrivateKey) -> None:
        """Switch to a new node key (rotation): from now on only it is spoken and answered.

        Messages for the old key are rejected (``recipient``) as for any other key. Path
        stats survive -- the peers' identities did not change -- but probes still out
        were sent under the old key: they are forgotten rather than counted as losses.
        """
        self.codec = ProbeCodec(
            key, window=self.config.window, replay_capacity=self.config.replay_capacity
        )
        self._outstanding.clear()
        self._deadlines.clear()

    def _drop_peer_paths(self, peer: PeerId) -> None:
        for key in [k for k in self._paths if k[0] == peer]:
            self._paths.pop(key).live = False
        self._observed.forget(peer)

    def set_chosen(self, peer: PeerId, address: IPv4Address | None) -> None:
        """The path the daemon uses for ``peer``: probed at the fast interval from now on."""
        previous = self._chosen.pop(peer, None)
        if previous is not None and (old := self._paths.get((peer, previous))) is not None:
            old.fast = False  # its pending fast probe still runs; the next one is slow
        if address is None:
            return
        self._chosen[peer] = address
        path = self._paths.get((peer, address))
        if path is None or path.fast:
            return
        path.fast = True
        now = self._clock()
        if path.due > now + self.config.fast_interval:
            self._timers.schedule(path, now + self._rng.uniform(0, self.config.fast_interval))
            self._arm()

    def pace(self, idle: Iterable[PeerId] = (), fast: Iterable[PeerId] = ()) -> None:
        """Probe the ``idle`` peers at the idle pace from now on, and the ``fast`` ones at
        the fast pace (the default); every other peer keeps its pace. A peer turning fast
        has each path probed within its fast (or slow) interval; a peer turning idle has
        its next probes at a random point of their idle intervals (but a path never
        probed keeps its first probe), so that peers that turn idle together (all of
        them, 30 s after start) are not probed in waves."""
        now = self._clock()
        slept = [p for p in idle if p not in self._idle]
        self._idle.update(slept)
        for peer in slept:
            target = self._peers.get(peer)
            for address in () if target is None else target.candidates:
                path = self._paths[(peer, address)]
                if not path.sent:
                    continue  # a new path keeps its first probe (``initial_spread``)
                limit = base_interval(self.config, path.fast, idle=True)
                self._timers.schedule(path, now + self._rng.uniform(0, limit))
        woken = [p for p in fast if p in self._idle]
        self._idle.difference_update(woken)
        for peer in woken:
            target = self._peers.get(peer)
            for address in () if target is None else target.candidates:
                path = self._paths[(peer, address)]
                limit = base_interval(self.config, path.fast, idle=False)
                if path.due > now + limit:
                    self._timers.schedule(path, now + self._rng.uniform(0, limit))
        if woken or slept:
            self._arm()

    def vouch(self, peer: PeerId, address: IPv4Address) -> None:
        """Something else just proved ``peer``'s path via ``address`` alive (its WireGuard
        session, overlayd/planning/probe_pace.py): for an idle peer's verified path that
        stands in for a reply, and its next probe moves an idle interval away."""
        path = self._paths.get((peer, address))
        if path is None or path.verified_since is None or peer not in self._idle:
            return
        now = self._clock()
        path.record_vouch(now)
        self._timers.schedule(path, now + self._interval(path))

    # -- what the daemon reads -------------------------------------------------------

    def stats(self, peer: PeerId) -> dict[IPv4Address, PathStats]:
        """Stats of every probed address of ``peer`` (empty for an unknown peer)."""
        target = self._peers.get(peer)
        if target is None:
            return {}
        return {a: self._paths[(peer, a)].stats() for a in target.probed()}

    def observations(self) -> tuple[Observation[PeerId], ...]:
        """Our addresses as peers reported them (feed to ``choose.confirmed_public``)."""
        return self._observed.all()

    def heard_from(self, peer: PeerId) -> bool:
        """Whether ``peer`` has probed us (``probe_sources``)."""
        return peer in self._sources

    def probe_sources(self) -> dict[PeerId, Endpoint]:
        """Where each peer's latest accepted probe came from: its probe socket's NAT
        mapping as we see it (published for it as ``Seen``, overlayd/planning/punch.py)."""
        return dict(self._sources)

    # -- scheduling ------------------------------------------------------------------

    def _interval(self, path: ProbedPath[PeerId]) -> float:
        base = base_interval(self.config, path.fast, path.peer in self._idle)
        return base * self._rng.uniform(1 - self.config.jitter, 1 + self.config.jitter)

    def _arm(self) -> None:
        """Set the one timer for the tick at which the earliest timer or probe timeout is
        due, unless it is already set for then or earlier (``schedule.tick_at``)."""
        if self._loop is None:
            return
        first = self._timers.next_due()
        if self._deadlines and (first is None or self._deadlines[0][0] < first):
            first = self._deadlines[0][0]
        if first is None:
            return
        at = tick_at(first, self.config.tick)
        if self._alarm is not None:
            if self._alarm_at <= at:
                return
            self._alarm.cancel()
        self._alarm_at = at
        # the loop's clock may run a little behind ours: late by a millisecond, not early
        delay = max(0.0, at - self._clock()) + 0.001
        self._alarm = self._loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        """Everything due by this tick: timeouts, then probes and settle checks."""
        self._alarm = None
        try:
            now = self._clock()
            self._expire(now + slack(self.config.tick))
            self._fire(now)
        finally:
            self._arm()

    def _fire(self, now: float) -> None:
        for due, kind, path in self._timers.pop_due(now + slack(self.config.tick)):
            if kind == Timer.STABLE:
                if path.verified_since is not None and path.verified_since + (
                    self.config.stable_after
                ) <= due + slack(self.config.tick):
                    self._changed(path.peer)
                continue
            self._send_probe(path, now)
            self._timers.schedule(path, now + self._interval(path))
        self._timers.compact(len(self._paths))

    def _send_probe(self, path: ProbedPath[PeerId], now: float) -> None:
        if self._transport is None:
            return
        try:
            nonce, data = self.codec.encode_probe(path.key)
        except ProbeError as exc:  # a low-order key in a lease: nobody can answer it
            self._count_reject(exc, None)
            return
        try:
            self._transport.sendto(data, path.sockaddr)
        except OSError:
            self.counters.send_errors += 1
        path.sent += 1
        self.counters.probes_sent += 1
        self._outstanding[nonce] = (path, now)
        self._deadlines.append((now + self.config.timeout, nonce))

    def _expire(self, now: float) -> None:
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, nonce = deadlines.popleft()
            entry = self._outstanding.pop(nonce, None)
            if entry is None:
                continue  # answered
            path = entry[0]
            if not path.live:
                continue
            self.counters.losses += 1
            if path.record_loss(self.config.loss_threshold):
                log.info(
                    "path to %s via %s unverified after %d lost probes",
                    path.peer,
                    path.address,
                    path.losses,
                )
                self._changed(path.peer)

    def _changed(self, peer: PeerId | None) -> None:
        if self._on_change is not None:
            self._on_change(peer)

    # -- datagrams -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport: no isinstance
        self._transport = cast(asyncio.DatagramTransport, transport)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier sends (port unreachable...): losses will show it
        self.counters.send_errors += 1

    def _expects_reply(self, sender: PublicKey, nonce: bytes) -> bool:
        entry = self._outstanding.get(nonce)
        return entry is not None and entry[0].key == sender and entry[0].live

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if not data:
            return  # a hole-punching opener that got this far (overlayd/probe/opener.py)
        if self._taker is not None and self._taker(data, addr):
            return
        try:
            message = self.codec.decode(
                data, known=self._keys.__contains__, expects_reply=self._expects_reply
            )
        except ProbeError as exc:
            self._count_reject(exc, addr)
            return
        if isinstance(message, Probe):
            self.counters.probes_received += 1
            observed = self._observed_as(addr)
            self._note_source(message.sender, observed)
            if self._transport is not None:
                try:
                    reply = self.codec.encode_reply(message, (observed.address, observed.port))
                    self._transport.sendto(reply, addr)
                    self.counters.replies_sent += 1
                except OSError:
                    self.counters.send_errors += 1
            return
        self.counters.replies_received += 1
        path, sent_at = self._outstanding.pop(message.echo)
        now = self._clock()
        rtt = now - sent_at
        self._on_rtt(self._peers[path.peer].site, rtt)
        if path.record_reply(now, rtt, self.config.rtt_alpha):
            log.info("path to %s via %s verified (rtt %.1f ms)", path.peer, path.address, rtt * 1e3)
            if path.downs:
                self._timers.schedule(path, now + self.config.stable_after, Timer.STABLE)
                self._arm()
            self._changed(path.peer)
        if self._observed.observe(path.peer, self._peers[path.peer].site, message.observed, now):
            self._changed(None)  # new, or corroborated: may change our confirmed public address

    def _observed_as(self, addr: tuple[str | Any, int]) -> Endpoint:
        """``addr`` as an ``Endpoint``: parsed once per source (an address parse costs more
        than the rest of a reply), remembered for as many sources as there are peers' paths
        (only authenticated probes get here)."""
        found = self._addrs.get(addr)
        if found is None:
            if len(self._addrs) > 2 * len(self._paths) + 64:
                self._addrs.clear()
            found = self._addrs[addr] = Endpoint(IPv4Address(str(addr[0])), addr[1])
        return found

    def _note_source(self, sender: PublicKey, source: Endpoint) -> None:
        peer = self._keys.get(sender)
        if peer is None or self._sources.get(peer) == source:
            return
        self._sources[peer] = source
        heard = self._heard.get(peer, ())
        if source not in heard:
            # a multi-homed peer probes from several sources in turn: only a new one may
            # change what we publish as seen for it (``Observations``' bound, per peer)
            self._heard[peer] = (*heard, source)[-MAX_OBSERVED:]
            self._changed(None)

    def _count_reject(self, exc: ProbeError, addr: tuple[str | Any, int] | None) -> None:
        reason = exc.reason
        self.counters.rejected[reason] += 1
        suppressed = self._reject_log.allow(reason)
        if suppressed is None:
            return
        level = (
            logging.DEBUG if reason in (Reject.RECIPIENT, Reject.UNSOLICITED) else (logging.WARNING)
        )
        log.log(
            level,
            "rejected probe message from %s: %s%s",
            f"{addr[0]}:{addr[1]}" if addr else "-",
            exc,
            f" ({suppressed} more since the last report)" if suppressed else "",
        )
