"""overlayd/agent/relay_keeper.py: when a peer is stranded (grace time) and when it
leaves its relay (hold time), on a clock the test turns; what ``/peers`` says of relays;
which round trips are published."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from overlayd.agent.path_keeper import PeerReport
from overlayd.agent.relay_keeper import RelayKeeper, annotate
from overlayd.disk.node_key import NodeKey
from overlayd.values.keys import PublicKey
from overlayd.values.lease import LeaseRecord
from overlayd.values.paths import PUBLIC, PeerPath
from overlayd.values.wireguard import HANDSHAKE_FRESH, Endpoint, WgPeerConfig, WgPeerState
from tests.builders import record, wg_key

A, B, C = (IPv4Network(f"10.244.{n}.0/24") for n in (1, 2, 3))
R = IPv4Network("10.244.10.0/24")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def keeper(tmp_path: Path, clock: Clock, woken: list[int] | None = None) -> RelayKeeper:
    key = NodeKey.load_or_create(tmp_path)
    return RelayKeeper(key, lambda: (woken or []).append(1), clock, grace=3.0, upgrade_hold=3.0)


def run(coro: object) -> None:
    async def main() -> None:
        await coro  # type: ignore[misc]

    asyncio.run(main())


def test_no_peers_none_stranded(tmp_path: Path) -> None:
    async def go() -> None:
        assert keeper(tmp_path, Clock()).stranded([], set()) == frozenset()

    run(go())


def test_a_peer_is_stranded_only_after_the_grace_time(tmp_path: Path) -> None:
    async def go() -> None:
        clock = Clock()
        k = keeper(tmp_path, clock)
        assert k.stranded([A, B], {B}) == frozenset()
        clock.now += 2.9
        assert k.stranded([A, B], {B}) == frozenset()
        clock.now += 0.2
        assert k.stranded([A, B], {B}) == {A}  # B is verified: never stranded

    run(go())


def test_leaving_the_relay_needs_a_direct_path_for_the_hold_time(tmp_path: Path) -> None:
    async def go() -> None:
        clock = Clock()
        k = keeper(tmp_path, clock)
        k.stranded([A], set())
        clock.now += 3.0
        assert k.stranded([A], set()) == {A}
        assert k.stranded([A], {A}) == {A}  # direct path verified: not yet
        clock.now += 2.0
        assert k.stranded([A], set()) == {A}  # it flapped: the hold starts over
        assert k.stranded([A], {A}) == {A}
        clock.now += 2.9
        assert k.stranded([A], {A}) == {A}
        clock.now += 0.2
        assert k.stranded([A], {A}) == frozenset()

    run(go())


def test_a_peer_that_left_is_forgotten(tmp_path: Path) -> None:
    async def go() -> None:
        clock = Clock()
        k = keeper(tmp_path, clock)
        k.stranded([A], set())
        clock.now += 3.0
        assert k.stranded([A], set()) == {A}
        assert k.stranded([], set()) == frozenset()
        assert k.stranded([A], set()) == frozenset()  # back: a new grace time

    run(go())


def test_the_grace_time_running_out_wakes_the_daemon(tmp_path: Path) -> None:
    async def go() -> None:
        woke = asyncio.Event()
        k = RelayKeeper(
            NodeKey.load_or_create(tmp_path), woke.set, asyncio.get_running_loop().time,
            grace=0.05,
        )  # fmt: skip
        k.stranded([A], set())
        await asyncio.wait_for(woke.wait(), 5.0)
        assert k.stranded([A], set()) == {A}

    run(go())


# -- silent peers: a verified path WireGuard's handshake does not cross -------------------

WALL = 1_800_000_000.0  # the device's handshake times are UNIX times
EP = Endpoint.parse("203.0.113.2:51820")
PEERS = {B: record(str(B), "b", "id-b", 2, public_key=wg_key(2))}
KEY_B = PublicKey.from_base64(wg_key(2))


def _device(
    endpoint: Endpoint | None = EP, handshake: float | None = None
) -> dict[PublicKey, WgPeerState]:
    config = WgPeerConfig(KEY_B, endpoint=endpoint, allowed_ips=(B,), persistent_keepalive=25)
    return {KEY_B: WgPeerState(config, last_handshake=handshake)}


def _silent_keeper(tmp_path: Path, clock: Clock) -> tuple[RelayKeeper, list[int]]:
    woken: list[int] = []
    k = RelayKeeper(
        NodeKey.load_or_create(tmp_path), lambda: woken.append(1), clock, grace=3.0,
        upgrade_hold=3.0, handshake_grace=7.0,
    )  # fmt: skip
    return k, woken


def test_a_verified_peer_without_handshake_is_stranded_after_the_handshake_grace(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> None:
        clock = Clock()
        k, woken = _silent_keeper(tmp_path, clock)
        assert k.stranded([B], {B}) == frozenset()
        k.wireguard_read(_device(), PEERS, WALL)
        clock.now += 6.9
        k.wireguard_read(_device(), PEERS, WALL + 6.9)
        assert k.stranded([B], {B}) == frozenset() and woken == []
        clock.now += 0.2
        k.wireguard_read(_device(), PEERS, WALL + 7.1)
        assert woken == [1]  # the daemon plans again
        assert k.stranded([B], {B}) == {B}  # at once: its grace time is spent
        k.wireguard_read(_device(), PEERS, WALL + 8.0)
        assert woken == [1]  # no news, no wake-up

    with caplog.at_level(logging.INFO, "overlayd.relay"):
        run(go())
    lines = [r.getMessage() for r in caplog.records if r.name == "overlayd.relay"]
    assert len(lines) == 1 and "no WireGuard handshake with 203.0.113.2:51820" in lines[0]


def test_a_handshake_ends_the_silence_and_the_pair_leaves_after_the_hold(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> None:
        clock = Clock()
        k, woken = _silent_keeper(tmp_path, clock)
        k.wireguard_read(_device(), PEERS, WALL)
        clock.now += 7.0
        k.wireguard_read(_device(), PEERS, WALL + 7.0)
        assert k.stranded([B], {B}) == {B}
        clock.now += 1.0  # the relay's peer of B (no AllowedIPs) completes a handshake
        k.wireguard_read(_device(handshake=WALL + 7.5), PEERS, WALL + 8.0)
        assert len(woken) == 2
        assert k.stranded([B], {B}) == {B}  # the hold time first
        clock.now += 3.0
        assert k.stranded([B], {B}) == frozenset()

    with caplog.at_level(logging.INFO, "overlayd.relay"):
        run(go())
    assert "peer 10.244.2.0/24: WireGuard handshake over the direct path" in caplog.text


@pytest.mark.parametrize(
    "later",
    [
        _device(Endpoint.parse("203.0.113.2:40000")),  # a new endpoint: a new attempt
        _device(handshake=WALL + 6.0),  # a handshake
        {},  # no read: nothing behind NAT any more
        _device(endpoint=None),  # it dials us: nothing to test
    ],
    ids=["new-endpoint", "handshake", "empty-read", "no-endpoint"],
)
def test_what_restarts_or_ends_the_wait(
    tmp_path: Path, later: dict[PublicKey, WgPeerState]
) -> None:
    async def go() -> None:
        clock = Clock()
        k, _ = _silent_keeper(tmp_path, clock)
        k.wireguard_read(_device(), PEERS, WALL)
        clock.now += 6.0
        k.wireguard_read(later, PEERS, WALL + 6.0)
        clock.now += 4.0  # 10 s since the first read, 4 s since ``later``
        k.wireguard_read(later, PEERS, WALL + 10.0)
        assert k.stranded([B], {B}) == frozenset()

    run(go())


def test_a_handshake_older_than_wireguards_session_is_none(tmp_path: Path) -> None:
    async def go() -> None:
        clock = Clock()
        k, _ = _silent_keeper(tmp_path, clock)
        stale = WALL - HANDSHAKE_FRESH
        k.wireguard_read(_device(handshake=stale), PEERS, WALL)
        clock.now += 7.0
        k.wireguard_read(_device(handshake=stale), PEERS, WALL + 7.0)
        assert k.stranded([B], {B}) == {B}

    run(go())


def test_an_unknown_key_on_the_device_is_ignored(tmp_path: Path) -> None:
    async def go() -> None:
        clock = Clock()
        k, woken = _silent_keeper(tmp_path, clock)
        for _ in range(3):
            k.wireguard_read(_device(), {}, WALL + clock.now)
            clock.now += 5.0
        assert woken == [] and k.stranded([B], {B}) == frozenset()

    run(go())


def _report(subnet: IPv4Network, rtt: float | None, verified: bool) -> PeerReport:
    path = PeerPath(IPv4Address("192.0.2.31"), PUBLIC, "verified public address")
    seen = (path.address,) if verified else ()
    return PeerReport(f"n{subnet.network_address}", subnet, "x", path, rtt, None, seen)


@pytest.mark.parametrize(
    ("relay", "rtt", "verified", "expected"),
    [
        (True, 4.5, True, {R: 4.5}),
        (True, 4.5, False, {}),  # its path is a guess: no round trip to publish
        (True, None, True, {}),
        (False, 4.5, True, {}),  # not a relay
    ],
)
def test_measured_round_trips_are_those_of_verified_relays(
    tmp_path: Path,
    relay: bool,
    rtt: float | None,
    verified: bool,
    expected: dict[IPv4Network, float],
) -> None:
    records = {R: record(str(R), "r", "id-r", 10, relay=relay)}
    k = keeper(tmp_path, Clock())
    assert k.measured(records, [_report(R, rtt, verified)]) == expected


def test_rtts_ask_the_path_keeper_only_when_a_relay_exists(tmp_path: Path) -> None:
    me = record(str(A), "a", "id-a", 1)
    asked: list[int] = []

    def report(peers: Mapping[IPv4Network, LeaseRecord]) -> list[PeerReport]:
        asked.append(len(peers))
        return [_report(R, 4.0, True)]

    k = keeper(tmp_path, Clock())
    assert k.rtts(me, {B: record(str(B), "b", "id-b", 2)}, report) == () and asked == []
    records = {R: record(str(R), "r", "id-r", 10, relay=True), B: record(str(B), "b", "id-b", 2)}
    assert k.rtts(me, records, report) == ((R, 4),) and asked == [1]  # asked of R alone


def test_peers_say_their_relay_or_why_they_have_no_path() -> None:
    reports = [_report(A, 1.0, True), _report(B, 2.0, True), _report(C, 3.0, True)]
    out = annotate(reports, {A: "bare"}, {B: "no relay reaches both"})
    assert out[0].relay == "bare" and out[0].to_json()["relay"] == "bare"
    assert out[1].path is None and out[1].to_json()["kind"] == "none"
    assert out[1].to_json()["reason"] == "no relay reaches both"
    assert out[2] == reports[2]
