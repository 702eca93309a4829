"""The start-up phase clock (overlayd/runtime/phases.py): times since exec, one debug line
per phase, the summary and the loaded packages once the last phase is reached."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from overlayd.runtime.phases import Phase, PhaseClock, loaded_packages, process_age

LOG = logging.getLogger("overlayd.test.phases")


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOG.name]


def test_no_phase_reached(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, LOG.name)
    phases = PhaseClock(LOG, clock=FakeClock())
    assert phases.reached == {}
    assert not phases.done(Phase.IMPORTS)
    assert phases.summary() == ""
    assert lines(caplog) == []


def test_one_phase_counts_from_the_process_start(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, LOG.name)
    clock = FakeClock()
    phases = PhaseClock(LOG, age=0.25, clock=clock)  # the process is 0.25 s old already
    clock.now += 0.5
    phases.reach(Phase.IMPORTS)
    assert phases.reached == {Phase.IMPORTS: pytest.approx(0.75)}
    assert phases.done(Phase.IMPORTS)
    assert lines(caplog) == ["start-up phase imports at 0.750 s (+0.750 s)"]


def test_many_phases_in_order_each_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, LOG.name)
    clock = FakeClock()
    phases = PhaseClock(LOG, clock=clock, modules=lambda: ["overlayd.agent", "click.core"])
    for step, phase in enumerate((Phase.IMPORTS, Phase.STORE, Phase.LEASE), start=1):
        clock.now = 100.0 + step
        phases.reach(phase)
    clock.now = 110.0
    phases.reach(Phase.STORE)  # again: the first time counts, no second line
    assert phases.reached[Phase.STORE] == pytest.approx(2.0)
    clock.now = 104.5
    phases.reach(Phase.LAST_PEER)
    assert lines(caplog) == [
        "start-up phase imports at 1.000 s (+1.000 s)",
        "start-up phase store connected at 2.000 s (+1.000 s)",
        "start-up phase lease claimed at 3.000 s (+1.000 s)",
        "start-up phase last peer programmed at 4.500 s (+1.500 s)",
        "start-up: imports 1.000 s, store connected 2.000 s, lease claimed 3.000 s, "
        "last peer programmed 4.500 s",
        "loaded at start-up: 2 packages: click overlayd.agent",
    ]


def test_a_phase_reached_out_of_order_is_sorted_in_the_summary() -> None:
    clock = FakeClock()
    phases = PhaseClock(LOG, clock=clock)
    clock.now = 102.0
    phases.reach(Phase.DEVICES)
    clock.now = 101.0  # (a clock never goes back; phases may be reached in any order)
    phases.reach(Phase.SNAPSHOT)
    assert phases.summary() == "snapshot loaded 1.000 s, devices set up 2.000 s"


def test_loaded_packages() -> None:
    assert loaded_packages([]) == []
    assert loaded_packages(["aiohttp.web", "aiohttp", "_ssl", "overlayd", "overlayd.x.y"]) == [
        "aiohttp",
        "overlayd",
        "overlayd.x.y",
    ]


def test_process_age_from_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    # a command name with spaces and a parenthesis, as stat(5) allows; starttime 1000 ticks
    fields = ["S"] + ["0"] * 18 + ["1000"] + ["0"] * 10
    stat.write_text("42 (over (d) x) " + " ".join(fields))
    ticks = os.sysconf("SC_CLK_TCK")
    assert process_age(stat, boottime=lambda: 1000 / ticks + 2.5) == pytest.approx(2.5)
    assert process_age(stat, boottime=lambda: 0.0) == 0.0  # never negative


@pytest.mark.parametrize("content", ["", "42 (x)", "42 (x) S not numbers " + "y " * 30])
def test_process_age_unreadable_is_zero(tmp_path: Path, content: str) -> None:
    stat = tmp_path / "stat"
    stat.write_text(content)
    assert process_age(stat, boottime=lambda: 5.0) == 0.0
    assert process_age(tmp_path / "missing", boottime=lambda: 5.0) == 0.0


def test_process_age_of_this_process_is_plausible() -> None:
    age = process_age()
    assert 0.0 < age < 24 * 3600
