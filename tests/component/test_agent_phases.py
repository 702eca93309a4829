"""The agent's start-up phases (overlayd/runtime/phases.py as the daemon feeds it): each
one reached once, in order, and "last peer programmed" only once every peer's chosen path
is verified (here: chosen by the test, which ``VerifyingPaths`` counts as verified)."""

from __future__ import annotations

import asyncio
import logging
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from overlayd.runtime.phases import Phase
from tests.component.agent_harness import Agent, agent, converged, until
from tests.component.fake_paths import FakePaths

IN_ORDER = (Phase.PROBES, Phase.CONFIG, Phase.LEASE, Phase.DEVICES, Phase.FIRST_RECONCILE)


class VerifyingPaths(FakePaths):
    """Fake paths where a path the test chose counts as verified by probes."""

    def verified(self) -> set[IPv4Network]:
        return set(self.chosen)


def phase_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "start-up phase" in r.getMessage()]


def assert_in_order(a: Agent) -> None:
    reached = a.daemon.phases.reached
    times = [reached[p] for p in IN_ORDER]
    assert times == sorted(times), reached
    assert reached[Phase.SNAPSHOT] >= reached[Phase.LEASE]


def test_alone_every_phase_is_reached_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "overlayd")

    async def body() -> None:
        async with agent(tmp_path, paths=VerifyingPaths()) as a:
            await until(converged(a), "the first pass")
            await until(lambda: _done(a, Phase.LAST_PEER), "no peer: the last one is programmed")
            assert_in_order(a)
            assert not a.daemon.phases.done(Phase.FIRST_PATH)  # no peer, no path

    asyncio.run(body())
    names = [line.split(" at ")[0] for line in phase_lines(caplog)]
    assert len(names) == len(set(names))  # one line per phase


def test_last_peer_waits_for_every_path(tmp_path: Path) -> None:
    paths = VerifyingPaths()

    async def body() -> None:
        async with agent(tmp_path, peers=3, paths=paths) as a:
            await until(converged(a), "the first pass")
            assert_in_order(a)
            await asyncio.sleep(0.1)  # a pass or two more: still nothing verified
            assert not a.daemon.phases.done(Phase.FIRST_PATH)
            assert not a.daemon.phases.done(Phase.LAST_PEER)
            peers = [IPv4Network(f"10.244.{n}.0/24") for n in (2, 3, 4)]
            for i, subnet in enumerate(peers):
                paths.choose(subnet, IPv4Address(f"192.0.2.{i + 1}"))
                await until(lambda: _done(a, Phase.FIRST_PATH), "the first path verified")
                if i < len(peers) - 1:
                    await asyncio.sleep(0.05)
                    assert not a.daemon.phases.done(Phase.LAST_PEER), i
            await until(lambda: _done(a, Phase.LAST_PEER), "the last peer programmed")
            reached = a.daemon.phases.reached
            assert reached[Phase.FIRST_PATH] <= reached[Phase.LAST_PEER]

    asyncio.run(body())


async def _done(a: Agent, phase: Phase) -> bool:
    return a.daemon.phases.done(phase)
