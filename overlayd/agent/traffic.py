"""Samples which peers carry traffic, for the probe pace (overlayd/planning/probe_pace.py).

Every ``SAMPLE_INTERVAL`` seconds one read of what the data plane already counts: the
VXLAN device's FDB entries (how long ago each forwarded a frame: one netlink dump) and the
WireGuard device's peers (rx/tx bytes: one read of the device). The entries are mapped
to peer subnets through the leases (VTEP MAC, public key) and handed to the path keeper,
which re-paces the prober. Nothing is written, and nothing runs between samples.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from ipaddress import IPv4Network

from overlayd.agent.path_api import PathKeeping
from overlayd.dataplane.api import DataPlaneApi
from overlayd.planning.probe_pace import PeerSample
from overlayd.runtime.logs import Throttle
from overlayd.values.config import BackendConfig
from overlayd.values.errors import OverlaydError
from overlayd.values.lease import LeaseRecord
from overlayd.values.wireguard import WgPeerState

log = logging.getLogger("overlayd")

SAMPLE_INTERVAL = 5.0  # seconds: how soon a peer that starts carrying traffic is probed fast
_ERROR_LOG_EVERY = 60.0  # seconds between log lines about failed samples


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
        self.last: Mapping[IPv4Network, PeerSample] = {}  # the latest sample (for metrics)

    async def sample(self) -> dict[IPv4Network, PeerSample]:
        """One sample, by peer subnet (peers without a data-plane entry are left out)."""
        records = self._records()
        out: dict[IPv4Network, PeerSample] = {}
        ifindex = self._vxlan_ifindex()
        if self._backend.uses_vxlan and ifindex:
            by_mac = {r.vtep_mac: s for s, r in records.items()}
            for mac, idle_for in (await self._dp.fdb_idle(ifindex)).items():
                subnet = by_mac.get(mac)
                if subnet is not None:
                    out[subnet] = PeerSample(idle_for=idle_for)
        if self._backend.uses_wireguard:
            wall = time.time()  # WireGuard's handshake times are wall-clock
            by_key = {r.public_key: s for s, r in records.items() if r.public_key}
            for key, peer in (await self._dp.wireguard_peers()).items():
                subnet = by_key.get(key.base64)
                if subnet is not None:
                    out[subnet] = _wireguard_sample(out.get(subnet), peer, wall)
        return out

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
            self.last = samples
            self._paths.note_traffic(samples)
