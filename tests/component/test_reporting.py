"""The daemon's status reporter (overlayd/agent/reporting.py) against the in-memory store:
written on change only, at most every ``min_interval``, bound to its own short etcd
lease (gone when the node is), one warning a minute while the store fails."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from overlayd.agent.host import Clock
from overlayd.agent.path_keeper import PeerReport
from overlayd.agent.reporting import StatusReporter
from overlayd.agent.status_docs import Status
from overlayd.planning.report import ReportParams
from overlayd.store.api import StoreKeys
from overlayd.store.memory import MemStore
from overlayd.store.memory_kv import ManualClock
from overlayd.values.errors import StoreError
from overlayd.values.lease import LeaseRecord
from overlayd.values.paths import PRIVATE, PeerPath
from overlayd.values.report import NodeReport
from tests.builders import record
from tests.component.agent_harness import agent, until

ME = record("10.244.1.0/24", node="a1", node_id="id1", n=1, site="east")
ADDR = IPv4Address("192.168.1.12")
PARAMS = ReportParams(min_interval=5.0, refresh=120.0, ttl=20)


def peer(node: str, *, rtt: float = 1.0, verified: bool = True) -> PeerReport:
    path = PeerPath(ADDR, PRIVATE, "verified" if verified else "guess")
    subnet = IPv4Network(f"10.244.{len(node)}.0/24")
    return PeerReport(node, subnet, "east", path, rtt, None, (ADDR,) if verified else ())


class FlakyStore(MemStore):
    """A ``MemStore`` whose report writes fail while ``down`` (etcd away)."""

    down = False

    async def put_status_report(self, report: NodeReport, lease_id: int) -> None:
        if self.down:
            raise StoreError("etcd put status report failed: UNAVAILABLE: connection refused")
        await super().put_status_report(report, lease_id)


class World:
    """One reporter on a manual clock, its peers set by the test."""

    def __init__(self, held: LeaseRecord | None = ME) -> None:
        self.clock = ManualClock()
        self.store = FlakyStore(clock=self.clock)
        self.peers: list[PeerReport] = [peer("b2")]
        self.held = held
        self.status = Status(reconciles=1, last_reconcile=1_700_000_000.0)
        clock = Clock(monotonic=self.clock, wall=lambda: self.clock.now + 1_699_000_000.0)
        self.reporter = StatusReporter(
            self.store, lambda: self.held, lambda: self.peers, self.status, clock, PARAMS
        )
        self.key = StoreKeys(self.store.prefix).status("a1")

    def revision(self) -> int:
        found = self.store.get_raw(self.key)
        return 0 if found is None else found.mod_revision

    async def tick_after(self, seconds: float) -> None:
        self.clock.advance(seconds)
        await self.reporter.tick()

    async def listed(self) -> tuple[NodeReport, ...]:
        return (await self.store.list_status_reports()).reports


def run(body: Callable[[World], Coroutine[Any, Any, None]], held: LeaseRecord | None = ME) -> None:
    asyncio.run(body(World(held)))


def test_nothing_is_written_before_the_node_holds_a_lease() -> None:
    async def body(w: World) -> None:
        await w.tick_after(0)
        assert w.revision() == 0 and await w.listed() == ()

    run(body, held=None)


def test_nothing_is_written_before_the_first_reconcile_pass() -> None:
    async def body(w: World) -> None:
        w.status.reconciles, w.status.last_reconcile = 0, None
        await w.tick_after(0)
        assert w.revision() == 0
        w.status.reconciles = 1
        await w.tick_after(0)
        assert len(await w.listed()) == 1

    run(body)


def test_the_first_tick_writes_and_unchanged_ticks_write_nothing() -> None:
    async def body(w: World) -> None:
        await w.tick_after(0)
        (report,) = await w.listed()
        assert report.node == "a1" and report.site == "east" and report.paths == (("private", 1),)
        assert report.role == "mesh" and report.versions[0][0] == "overlayd"
        first = w.revision()
        for _ in range(20):  # 100 s: keepalives, no write
            w.status.last_reconcile = (w.status.last_reconcile or 0) + 5  # passes are no news
            w.peers = [peer("b2", rtt=1.2)]  # nor is a wobbling RTT
            await w.tick_after(5)
        assert w.revision() == first

    run(body)


def test_a_change_is_written_at_most_every_min_interval() -> None:
    async def body(w: World) -> None:
        await w.tick_after(0)
        first = w.revision()
        w.peers = [peer("b2", verified=False)]
        await w.tick_after(2)  # too soon
        assert w.revision() == first
        await w.tick_after(3)
        assert w.revision() > first
        (report,) = await w.listed()
        assert report.unreachable == ("b2",) and report.unreachable_total == 1
        second = w.revision()
        w.peers = [peer("b2"), peer("c33")]
        await w.tick_after(1)
        w.peers = [peer("b2"), peer("c33"), peer("d444")]
        await w.tick_after(1)
        assert w.revision() == second  # two changes within min_interval: not written yet
        await w.tick_after(3)
        (report,) = await w.listed()
        assert report.count("private") == 3  # the latest, written once
        assert w.revision() == second + 1

    run(body)


def test_an_unchanged_report_is_rewritten_at_each_refresh() -> None:
    async def body(w: World) -> None:
        await w.tick_after(0)
        first = (await w.listed())[0].written_at
        for _ in range(24):
            await w.tick_after(5)
        (report,) = await w.listed()
        assert report.written_at == first + PARAMS.refresh

    run(body)


def test_the_report_is_bound_to_its_own_short_lease_and_vanishes_with_the_node() -> None:
    async def body(w: World) -> None:
        await w.tick_after(0)
        found = w.store.get_raw(w.key)
        assert found is not None and found.lease != 0
        assert await w.store.ttl_left(found.lease) == PARAMS.ttl
        for _ in range(12):  # a minute of ticks: kept alive
            await w.tick_after(5)
        assert len(await w.listed()) == 1
        w.clock.advance(PARAMS.ttl + 1)  # the node died: no more ticks
        w.store.expire_leases()
        assert await w.listed() == ()

    run(body)


def test_a_lost_lease_is_replaced_and_the_report_written_again() -> None:
    async def body(w: World) -> None:
        await w.tick_after(0)
        found = w.store.get_raw(w.key)
        assert found is not None
        await w.store.revoke(found.lease)  # e.g. expired while etcd was away
        assert await w.listed() == ()
        await w.tick_after(7)  # the next renewal (every third of the TTL) finds it gone
        again = w.store.get_raw(w.key)
        assert again is not None and again.lease not in (0, found.lease)

    run(body)


def test_a_failing_store_gives_one_warning_a_minute_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="overlayd")

    async def body(w: World) -> None:
        w.store.down = True
        for _ in range(13):  # 60 s of failures
            await w.tick_after(5)
        lines = [r.getMessage() for r in caplog.records if "status report" in r.getMessage()]
        assert len(lines) == 2, lines
        assert "UNAVAILABLE" in lines[0] and "(11 more failures)" in lines[1]
        w.store.down = False
        await w.tick_after(5)
        assert len(await w.listed()) == 1

    run(body)


def test_the_daemon_publishes_its_report(tmp_path: Path) -> None:
    async def body() -> None:
        async with agent(tmp_path, peers=2) as a:
            key = StoreKeys(a.store.prefix).status("self")

            async def published() -> bool:
                return a.store.get_raw(key) is not None

            await until(published, "our status report")
            (report,) = (await a.store.list_status_reports()).reports
            me = await a.me()
            assert (report.node, report.subnet, report.site) == ("self", me.subnet, me.site)
            assert report.peers == 2  # the peers run no probes: both are unreachable
            assert report.unreachable == ("peer2", "peer3")

    asyncio.run(body())


def test_a_report_of_another_shape_is_not_ours_to_judge() -> None:
    async def body(w: World) -> None:
        await w.tick_after(0)
        w.held = replace(ME, site="west")  # our lease moved site: a change
        await w.tick_after(5)
        (report,) = await w.listed()
        assert report.site == "west"

    run(body)
