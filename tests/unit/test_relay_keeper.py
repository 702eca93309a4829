"""overlayd/agent/relay_keeper.py: when a peer is stranded (grace time) and when it
leaves its relay (hold time), on a clock the test turns; what ``/peers`` says of relays;
which round trips are published."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from overlayd.agent.path_keeper import PeerReport
from overlayd.agent.relay_keeper import RelayKeeper, annotate
from overlayd.disk.node_key import NodeKey
from overlayd.values.lease import LeaseRecord
from overlayd.values.paths import PUBLIC, PeerPath
from tests.builders import record

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
