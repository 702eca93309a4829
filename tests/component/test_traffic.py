"""Which peers carry traffic, read off the data plane (overlayd/agent/traffic.py), and how
the path keeper paces them from it (no root: the fake data plane, probes unsent)."""

from __future__ import annotations

import asyncio
import time
from ipaddress import IPv4Network
from pathlib import Path

from overlayd.agent.path_keeper import PathKeeper
from overlayd.agent.traffic import TrafficSampler
from overlayd.disk.node_key import NodeKey
from overlayd.planning.probe_pace import PaceParams, PeerSample
from overlayd.probe.settings import ProbeConfig
from overlayd.values.config import NetworkConfig
from overlayd.values.kernel_state import FdbEntry, KernelState
from overlayd.values.keys import PrivateKey, PublicKey
from overlayd.values.lease import LeaseRecord
from overlayd.values.wireguard import WgPeerConfig
from tests.builders import config, mac, record, wg_key
from tests.component.agent_harness import LOOPBACK, NETWORK
from tests.component.fake_dataplane import VXLAN_INDEX, FakeDataPlane
from tests.component.fake_paths import FakePaths


def network(backend: str) -> NetworkConfig:
    return config(Network=NETWORK, Backend={"Type": backend})


def peers(count: int, first: int = 2) -> dict[IPv4Network, LeaseRecord]:
    out = {}
    for n in range(first, first + count):
        rec = record(f"10.244.{n}.0/24", node=f"peer{n}", node_id=f"id{n}", n=n)
        out[rec.subnet] = rec
    return out


def with_fdbs(dp: FakeDataPlane, records: dict[IPv4Network, LeaseRecord]) -> None:
    fdbs = [FdbEntry(r.vtep_mac, r.public_ip) for r in records.values()]
    dp.preload(VXLAN_INDEX, KernelState.of([], [], fdbs))


def sample(
    cfg: NetworkConfig, dp: FakeDataPlane, records: dict[IPv4Network, LeaseRecord]
) -> dict[IPv4Network, PeerSample]:
    sampler = TrafficSampler(cfg.backend, lambda: VXLAN_INDEX, dp, FakePaths(), lambda: records)
    return asyncio.run(sampler.sample())


def test_no_peers_no_samples() -> None:
    assert sample(network("vxlan"), FakeDataPlane(), {}) == {}


def test_vxlan_fdb_use_by_peer() -> None:
    records, dp = peers(3), FakeDataPlane()
    with_fdbs(dp, records)
    dp.fdb_used[mac(3)] = time.monotonic()
    found = sample(network("vxlan"), dp, records)
    assert set(found) == set(records)
    busy = found[IPv4Network("10.244.3.0/24")].idle_for
    assert busy is not None and busy < 60
    assert found[IPv4Network("10.244.2.0/24")].idle_for == 300.0


def test_a_later_sample_has_only_the_entries_that_moved() -> None:
    """At 5,000 peers the pace must not redo every peer every sample: only readings that
    moved are news (an FDB entry used again, WireGuard counters that changed)."""
    records, dp = peers(4), FakeDataPlane()
    with_fdbs(dp, records)
    idle_since = time.monotonic() - 1000.0
    for r in records.values():
        dp.fdb_used[r.vtep_mac] = idle_since
    sampler = TrafficSampler(network("vxlan").backend, lambda: VXLAN_INDEX, dp, FakePaths(),
                             lambda: records)  # fmt: skip
    assert set(asyncio.run(sampler.sample())) == set(records)  # the first: everyone
    assert asyncio.run(sampler.sample()) == {}  # nobody sent since
    dp.fdb_used[mac(3)] = time.monotonic()
    assert set(asyncio.run(sampler.sample())) == {IPv4Network("10.244.3.0/24")}
    assert asyncio.run(sampler.sample()) == {}


def test_wireguard_peers_whose_counters_stand_still_are_no_news() -> None:
    records = {}
    for n in (2, 3):
        rec = record(f"10.244.{n}.0/24", node=f"peer{n}", node_id=f"id{n}", n=n,
                     public_key=wg_key(n))  # fmt: skip
        records[rec.subnet] = rec
    dp = FakeDataPlane()
    keys = [PublicKey.from_base64(r.public_key or "") for r in records.values()]
    for key in keys:
        dp.wg_peers[key] = WgPeerConfig(key)
    sampler = TrafficSampler(network("wireguard").backend, lambda: 0, dp, FakePaths(),
                             lambda: records)  # fmt: skip
    assert set(asyncio.run(sampler.sample())) == set(records)
    assert asyncio.run(sampler.sample()) == {}
    dp.wg_bytes[keys[1]] = 32  # a keepalive arrived: news (it may vouch for the path)
    assert set(asyncio.run(sampler.sample())) == {IPv4Network("10.244.3.0/24")}


def test_entries_of_no_lease_are_left_out() -> None:
    records, dp = peers(2), FakeDataPlane()
    with_fdbs(dp, {**records, **peers(2, first=5)})  # entries of peers 5 and 6 we hold no lease of
    assert set(sample(network("vxlan"), dp, records)) == set(records)


def test_a_device_not_set_up_yet_is_not_read() -> None:
    records, dp = peers(2), FakeDataPlane()
    with_fdbs(dp, records)
    sampler = TrafficSampler(network("vxlan").backend, lambda: 0, dp, FakePaths(), lambda: records)
    assert asyncio.run(sampler.sample()) == {}


def test_wireguard_counters_by_peer_key() -> None:
    records = {}
    for n in range(2, 6):
        rec = record(f"10.244.{n}.0/24", node=f"peer{n}", node_id=f"id{n}", n=n,
                     public_key=wg_key(n))  # fmt: skip
        records[rec.subnet] = rec
    dp = FakeDataPlane()
    for n, r in enumerate(records.values(), start=2):
        key = PublicKey.from_base64(r.public_key or "")
        dp.wg_peers[key] = WgPeerConfig(key)
        dp.wg_bytes[key] = 1000 * n
    stranger = PrivateKey.generate().public_key()  # a peer on the device of no lease
    dp.wg_peers[stranger] = WgPeerConfig(stranger)
    found = sample(network("wireguard"), dp, records)
    assert {s: p.wg_bytes for s, p in found.items()} == {
        s: 1000 * n for n, s in enumerate(records, start=2)
    }
    assert all(p.idle_for is None for p in found.values())


def _keeper_with_peers(
    tmp_path: Path, pace: PaceParams, last: int
) -> tuple[PathKeeper, dict[IPv4Network, LeaseRecord]]:
    """A path keeper (not started) holding peers 2 .. ``last``, their paths computed."""
    me = record("10.244.1.0/24", node="self", node_id="id1", n=1, public_key=wg_key(1))
    keeper = PathKeeper(
        NodeKey.load_or_create(tmp_path), ProbeConfig(port=0, bind=LOOPBACK), pace=pace
    )
    others = {}
    for n in range(2, last + 1):
        public = PrivateKey.generate().public_key().base64
        rec = record(f"10.244.{n}.0/24", node=f"peer{n}", node_id=f"id{n}", n=n,
                     public_key=public, probe_port=8473)  # fmt: skip
        others[rec.subnet] = rec
        keeper.lease_changed(me, rec.subnet, rec)
    keeper.recompute(me, others, others)
    return keeper, others


def test_path_keeper_paces_by_traffic(tmp_path: Path) -> None:
    keeper, others = _keeper_with_peers(tmp_path, PaceParams(change_hold=0.0), 4)
    busy = IPv4Network("10.244.3.0/24")
    keeper.note_traffic({busy: PeerSample(idle_for=0.0)})
    probing = {r.node: r.to_json()["probing"] for r in keeper.report(others, {})}
    assert probing == {"peer2": "idle", "peer3": "fast", "peer4": "idle"}
    keeper.note_traffic({})  # no news: traffic seen stays seen (for traffic_hold)
    assert {r.node for r in keeper.report(others, {}) if r.idle} == {"peer2", "peer4"}


def test_new_and_changed_peers_are_probed_fast(tmp_path: Path) -> None:
    keeper, others = _keeper_with_peers(tmp_path, PaceParams(change_hold=3600.0), 3)
    keeper.note_traffic({})
    assert {r.node: r.idle for r in keeper.report(others, {})} == {"peer2": False, "peer3": False}


def test_a_peer_without_probes_has_no_pace(tmp_path: Path) -> None:
    """A peer whose lease has no probe port is never probed: never reported idle."""
    keeper, others = _keeper_with_peers(tmp_path, PaceParams(change_hold=0.0), 2)
    me = record("10.244.1.0/24", node="self", node_id="id1", n=1, public_key=wg_key(1))
    plain = record("10.244.9.0/24", node="plain", node_id="id9", n=9)  # no key, no probe port
    keeper.lease_changed(me, plain.subnet, plain)
    everyone = {**others, plain.subnet: plain}
    keeper.recompute(me, everyone, [plain.subnet])
    keeper.note_traffic({})
    assert {r.node: r.idle for r in keeper.report(everyone, {})} == {"peer2": True, "plain": False}
