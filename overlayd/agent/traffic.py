"""Samples which peers carry traffic, for the probe pace (overlayd/planning/probe_pace.py).

Every ``SAMPLE_INTERVAL`` seconds one read of what the data plane already counts: the
VXLAN device's FDB entries (how long ago each forwarded a frame: one netlink dump) and the
WireGuard device's peers (rx/tx bytes: one read of the device). The entries whose reading
moved since the last sample are mapped to peer subnets through the leases (VTEP MAC,
public key) and handed to the path keeper, which re-paces the prober: at 5,000 peers of
which 50 carry traffic, about 50 per sample. Nothing is written, and nothing runs between
samples.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from ipaddress import IPv4Network
from typing import Generic, TypeVar

from overlayd.agent.path_api import PathKeeping
from overlayd.dataplane.api import DataPlaneApi
from overlayd.planning.probe_pace import PeerSample
from overlayd.runtime.logs import Throttle
from overlayd.values.config import BackendConfig
from overlayd.values.errors import OverlaydError
from overlayd.values.kernel_state import MacAddress
from overlayd.values.keys import PublicKey
from overlayd.values.lease import LeaseRecord
from overlayd.values.wireguard import WgPeerState

log = logging.getLogger("overlayd")

SAMPLE_INTERVAL = 5.0  # seconds: how soon a peer that starts carrying traffic is probed fast
_ERROR_LOG_EVERY = 60.0  # seconds between log lines about failed samples
# seconds an FDB entry's last use must move on to be news: the dump's ages have a clock
# tick's resolution and are read a little after ``now``, so an idle entry jitters by a few ms
_MOVED = 1.0


def _wireguard_sample(vxlan: PeerSample | None, peer: WgPeerState, wall: float) -> PeerSample:
    """A WireGuard peer's sample (with the VXLAN part, if any, kept)."""
    endpoint = peer.config.endpoint
    shook = peer.last_handshake
    return PeerSample(
        idle_for=None if vxlan is None else vxlan.idle_for,
        wg_bytes=peer.rx_bytes + peer.tx_bytes,
        wg_rx=peer.rx_bytes,
        wg_endpoint=None if endpoint is None else endpoint.address,
        wg_handshake_age=None if shook is None else wall - shook,
    )


F = TypeVar("F", bound=Hashable)


class _Index(Generic[F]):
    """Peer subnets by one field of their lease (VTEP MAC, public key), built again only
    when a look-up misses or finds a lease that changed: the leases are many, the entries
    looked up per sample few."""

    def __init__(self, field: Callable[[LeaseRecord], F | None]) -> None:
        self._field = field
        self._index: dict[F, IPv4Network] = {}

    def find(
        self, records: Mapping[IPv4Network, LeaseRecord], values: Iterable[F]
    ) -> dict[F, IPv4Network]:
        """The subnet of each of ``values`` that a lease has (the others are left out)."""
        index, rebuilt = self._index, False
        out: dict[F, IPv4Network] = {}
        for value in values:
            subnet = index.get(value)
            held = None if subnet is None else records.get(subnet)
            if subnet is not None and held is not None and self._field(held) == value:
                out[value] = subnet
                continue
            if not rebuilt:
                fields = ((self._field(r), s) for s, r in records.items())
                index = self._index = {f: s for f, s in fields if f is not None}
                rebuilt = True
                if (subnet := index.get(value)) is not None:
                    out[value] = subnet
        return out


class TrafficSampler:
    """Reads the peers' traffic off the devices of ``backend`` for ``paths``;
    ``vxlan_ifindex`` says where the VXLAN device is (0: not yet), ``records`` gives the
    leases (the lease fold's)."""

    def __init__(
        self,
        backend: BackendConfig,
        vxlan_ifindex: Callable[[], int],
        dataplane: DataPlaneApi,
        paths: PathKeeping,
        records: Callable[[], Mapping[IPv4Network, LeaseRecord]],
    ) -> None:
        self._backend, self._vxlan_ifindex, self._dp = backend, vxlan_ifindex, dataplane
        self._paths, self._records = paths, records
        self._errors = Throttle(_ERROR_LOG_EVERY)
        # each peer's latest reading (for metrics): samples carry only what moved
        self._latest: dict[IPv4Network, PeerSample] = {}
        self._fdb_used: dict[MacAddress, float] = {}  # the last sample's, monotonic
        self._by_mac: _Index[MacAddress] = _Index(lambda r: r.vtep_mac)
        self._by_key: _Index[str] = _Index(lambda r: r.public_key)
        self._wg_counters: dict[PublicKey, tuple[int, int]] = {}  # the last sample's rx, tx

    async def sample(self) -> dict[IPv4Network, PeerSample]:
        """One sample, by peer subnet: the peers whose reading moved since the last sample
        (the first sample has every peer with a data-plane entry; the pace keeps what it
        had for the others), so that the pace's work follows the peers with news, not the
        peer count."""
        records = self._records()
        out: dict[IPv4Network, PeerSample] = {}
        ifindex = self._vxlan_ifindex()
        if self._backend.uses_vxlan and ifindex:
            ages = await self._dp.fdb_idle(ifindex)
            moved = self._moved_fdb(ages, time.monotonic())
            subnets = self._by_mac.find(records, moved)
            for mac, subnet in subnets.items():
                out[subnet] = PeerSample(idle_for=moved[mac])
        if self._backend.uses_wireguard:
            wall = time.time()  # WireGuard's handshake times are wall-clock
            moved_wg = self._moved_wireguard(await self._dp.wireguard_peers())
            keys = {k.base64: k for k in moved_wg}
            for text, subnet in self._by_key.find(records, keys).items():
                out[subnet] = _wireguard_sample(out.get(subnet), moved_wg[keys[text]], wall)
        return out

    def _moved_fdb(self, ages: Mapping[MacAddress, float], now: float) -> dict[MacAddress, float]:
        """The FDB entries (with their ages) whose last use moved on since the last sample
        by ``_MOVED`` or more, or that are new: one loop, no allocation per entry."""
        last = self._fdb_used
        if len(last) > len(ages):  # entries went: forget them
            last = self._fdb_used = {m: t for m, t in last.items() if m in ages}
        moved = {}
        for mac, age in ages.items():
            used = now - age
            if used - last.get(mac, -math.inf) >= _MOVED:
                moved[mac] = age
                last[mac] = used  # one that moved less keeps its older reading: moves add up
        return moved

    def _moved_wireguard(
        self, peers: Mapping[PublicKey, WgPeerState]
    ) -> dict[PublicKey, WgPeerState]:
        """The WireGuard peers whose counters changed since the last sample (or are new):
        one whose counters stand still carries no traffic and vouches for nothing."""
        counters = {k: (p.rx_bytes, p.tx_bytes) for k, p in peers.items()}
        last, self._wg_counters = self._wg_counters, counters
        return {k: peers[k] for k, c in counters.items() if last.get(k) != c}

    def latest(self) -> list[PeerSample]:
        """Each current peer's latest reading (what ``/metrics`` sums); the readings of
        peers that left are dropped here, when asked, not on every sample."""
        records = self._records()
        self._latest = {s: v for s, v in self._latest.items() if s in records}
        return list(self._latest.values())

    async def run(self, interval: float = SAMPLE_INTERVAL) -> None:
        """Sample every ``interval`` seconds, forever; a failed sample is logged (at most
        once a minute) and skipped: the pace then stays as it was."""
        while True:
            await asyncio.sleep(interval)
            try:
                samples = await self.sample()
            except OverlaydError as exc:
                suppressed = self._errors.allow("sample")
                if suppressed is not None:
                    log.warning("cannot sample peer traffic for the probe pace: %s", exc)
                continue
            self._latest.update(samples)
            self._paths.note_traffic(samples)
