"""The start-up phase clock: when each step from process start to a working overlay ended.

Owns the start-up phases (``Phase``), the moment each was first reached, measured from the
start of the process (so the interpreter's start and the imports count), the one debug line
per phase, the summary line once the last phase is reached and the list of top-level
packages the process has loaded by then. The composition root creates one clock and feeds
the phases it sees (imports, options, store); the agent feeds the rest. Nothing here is
global: each daemon (or test) has its own clock.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from pathlib import Path


class Phase(Enum):
    """A step of start-up, in the order they usually end (some run in parallel)."""

    IMPORTS = "imports"  # the interpreter started and imported the daemon's modules
    OPTIONS = "options"  # flags parsed, logging set up
    STORE = "store connected"
    PROBES = "probes listening"
    CONFIG = "network config read"
    LEASE = "lease claimed"
    SNAPSHOT = "snapshot loaded"
    DEVICES = "devices set up"
    FIRST_RECONCILE = "first reconcile"
    FIRST_PATH = "first path verified"
    LAST_PEER = "last peer programmed"  # every peer's chosen path verified and applied


def process_age(
    stat: Path = Path("/proc/self/stat"), boottime: Callable[[], float] | None = None
) -> float:
    """Seconds since this process started (exec), from ``/proc``; 0.0 where unknown.

    The kernel counts the start time in clock ticks since boot, so it is compared with
    CLOCK_BOOTTIME (``boottime``), not with the monotonic clock, which stops in suspend.
    """
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        now = boottime() if boottime is not None else time.clock_gettime(time.CLOCK_BOOTTIME)
        return max(0.0, now - int(fields[19]) / ticks)  # field 22 of stat(5): starttime
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def loaded_packages(modules: Iterable[str]) -> list[str]:
    """The sorted top-level packages among ``modules`` (``sys.modules``' keys), with
    overlayd's own modules listed in full: what a start-up actually imported."""
    found: set[str] = set()
    for name in modules:
        if name.startswith("overlayd.") or name == "overlayd":
            found.add(name)
        elif not name.startswith("_"):
            found.add(name.split(".", 1)[0])
    return sorted(found)


class PhaseClock:
    """When each ``Phase`` was first reached, in seconds since the process started.

    ``age``: how old the process already is when the clock is made (``process_age()``; 0:
    count from now); ``clock``: the monotonic clock; ``modules``: what the summary lists as
    loaded (default: ``sys.modules`` at that moment).
    """

    def __init__(
        self,
        log: logging.Logger,
        *,
        age: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        modules: Callable[[], Iterable[str]] = lambda: list(sys.modules),
    ) -> None:
        self._log, self._clock, self._modules = log, clock, modules
        self._origin = clock() - age
        self._reached: dict[Phase, float] = {}
        self._last = 0.0  # when the phase reached before the newest one ended

    @property
    def reached(self) -> Mapping[Phase, float]:
        """Each phase reached so far, with its time since process start."""
        return dict(self._reached)

    def done(self, phase: Phase) -> bool:
        """Whether ``phase`` has been reached."""
        return phase in self._reached

    def reach(self, phase: Phase) -> None:
        """Record that ``phase`` ended now (later calls for the same phase are ignored)."""
        if phase in self._reached:
            return
        at = self._clock() - self._origin
        self._reached[phase] = at
        self._log.debug(
            "start-up phase %s at %.3f s (+%.3f s)", phase.value, at, max(0.0, at - self._last)
        )
        self._last = max(self._last, at)
        if phase is Phase.LAST_PEER:
            self._log.debug("start-up: %s", self.summary())
            packages = loaded_packages(self._modules())
            self._log.debug(
                "loaded at start-up: %d packages: %s", len(packages), " ".join(packages)
            )

    def summary(self) -> str:
        """Every phase reached, in the order reached, with its time since process start."""
        ordered = sorted(self._reached.items(), key=lambda item: item[1])
        return ", ".join(f"{phase.value} {at:.3f} s" for phase, at in ordered)
