"""The prober's timers on a grid of ticks (overlayd/probe/schedule.py): one wake-up serves
every timer of a tick, and no path waits more than a tick beyond its interval.

The prober serves its timers as ``serve`` below does (``Prober._tick``: at the tick of the
earliest timer, everything due by then, each path rescheduled an interval later), on a
simulated clock: deterministic, no sockets.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from ipaddress import IPv4Address

from hypothesis import given, settings
from hypothesis import strategies as st

from overlayd.probe.schedule import ProbedPath, Timers, slack, tick_at
from overlayd.values.keys import PublicKey

KEY = PublicKey(b"\x01" * 32)
TICK = 0.05


def paths(count: int) -> list[ProbedPath[int]]:
    return [ProbedPath(i, IPv4Address(0x7F010000 + i), KEY, 8473) for i in range(count)]


def serve(
    firsts: list[float], intervals: list[float], tick: float, until: float
) -> tuple[list[float], dict[int, list[float]]]:
    """Wake-up times, and per path the times it was probed, up to ``until``."""
    timers: Timers[int] = Timers()
    for path, first in zip(paths(len(firsts)), firsts, strict=True):
        timers.schedule(path, first)
    wakes: list[float] = []
    probed: dict[int, list[float]] = defaultdict(list)
    while (due := timers.next_due()) is not None and (at := tick_at(due, tick)) <= until:
        now = max(at, wakes[-1] if wakes else at)
        wakes.append(now)
        for _, _, path in timers.pop_due(now + slack(tick)):
            probed[path.peer].append(now)
            timers.schedule(path, now + intervals[path.peer])
    return wakes, probed


def test_no_timers_no_wake_up() -> None:
    timers: Timers[int] = Timers()
    assert timers.next_due() is None
    assert list(timers.pop_due(math.inf)) == []
    assert serve([], [], TICK, 100.0) == ([], {})


def test_one_path_wakes_once_per_probe() -> None:
    wakes, probed = serve([0.3], [1.0], TICK, 10.0)
    assert wakes == probed[0]
    assert len(wakes) == 10
    assert all(b - a <= 1.0 + TICK for a, b in itertools.pairwise(wakes))


def test_many_idle_paths_share_the_ticks() -> None:
    """5,000 idle paths probed every 60 s, first probes spread over a minute: ~83 probes a
    second, and no more than 20 wake-ups a second (one per tick) however many are due."""
    count, interval = 5000, 60.0
    firsts = [interval * i / count for i in range(count)]
    wakes, probed = serve(firsts, [interval] * count, TICK, 120.0)
    assert len(wakes) <= 120.0 / TICK + 1
    assert sum(map(len, probed.values())) >= 2 * count - 1  # everyone, twice
    assert len(probed) == count


def test_a_grid_tick_is_the_first_not_before_its_timer() -> None:
    assert tick_at(1.0, 0.0) == 1.0  # no grid
    assert tick_at(1.0, TICK) == 1.0
    assert tick_at(1.01, TICK) == 1.0  # within the slack: served at that tick
    assert math.isclose(tick_at(1.02, TICK), 1.05)


@given(st.floats(0, 1e6, allow_nan=False), st.sampled_from([0.01, 0.05, 0.1, 0.25]))
def test_a_timer_is_served_at_most_a_tick_late_or_a_slack_early(due: float, tick: float) -> None:
    at = tick_at(due, tick)
    assert due - slack(tick) - 1e-6 <= at <= due + tick - slack(tick) + 1e-6
    assert math.isclose(at / tick, round(at / tick), abs_tol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 2.0), st.sampled_from([0.4, 0.44, 5.0, 60.0, 66.0])),
        min_size=1,
        max_size=30,
    )
)
def test_every_path_is_probed_within_its_interval_and_a_tick(
    schedule: list[tuple[float, float]],
) -> None:
    """Fairness: whatever the mix of fast and idle paths, each is probed again no later
    than its interval plus one tick after the last time, and never before its interval
    less the slack; the wake-ups never outnumber the ticks."""
    firsts = [f for f, _ in schedule]
    intervals = [i for _, i in schedule]
    until = 200.0
    wakes, probed = serve(firsts, intervals, TICK, until)
    assert len(wakes) <= until / TICK + 1
    assert wakes == sorted(set(wakes))
    for peer, interval in enumerate(intervals):
        times = probed[peer]
        assert times[0] <= firsts[peer] + TICK
        for a, b in itertools.pairwise(times):
            assert interval - slack(TICK) - 1e-6 <= b - a <= interval + TICK + 1e-6
        assert until - times[-1] <= interval + TICK + 1e-6
