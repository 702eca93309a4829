"""The one retry policy of every control loop: exponential backoff, capped, with jitter.

Whether an error is retried is the error's own decision (``OverlaydError.retryable``), not
the call site's. The policy holds no clock: it is given a ``sleep`` (``asyncio.sleep`` by
default; tests pass one that records and returns at once) and an ``rng`` for the jitter.
It must not import the store, the data plane or anything that does I/O.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from overlayd.values.errors import OverlaydError, StoreError

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
Rng = Callable[[], float]  # uniform in [0, 1)


@dataclass(frozen=True)
class Backoff:
    """Delays ``first``, ``first * factor``, … up to ``cap`` seconds.

    ``jitter`` is the fraction a delay may be shortened by at random (never lengthened:
    the cap is a promise), so peers that failed together do not retry together.
    """

    first: float = 1.0
    cap: float = 10.0
    factor: float = 2.0
    jitter: float = 0.1

    def delay(self, attempt: int, rng: Rng) -> float:
        """The pause before retry number ``attempt`` (0: the first retry)."""
        base = min(self.first * self.factor ** min(attempt, 64), self.cap)
        return base * (1.0 - self.jitter * rng())


FIXED_1S = Backoff(first=1.0, cap=1.0)  # a loop that must come back soon, whatever failed


def retryable(exc: BaseException, *, running: bool = False) -> bool:
    """Whether a control loop should try again after ``exc`` (our errors say so).

    ``running``: a loop of a daemon that is up also retries store errors that need a person
    (``EtcdTlsError``): exiting would fix nothing and the data plane keeps working, so it
    logs and keeps trying (docs/etcd-access.md); only at the first contact do they end it.
    """
    if not isinstance(exc, OverlaydError):
        return False
    return exc.retryable or (running and isinstance(exc, StoreError))


class Retry:
    """The state of one loop's backoff: ``pause()`` after a failure, ``reset()`` after a
    success; ``running``: see ``retryable``."""

    def __init__(
        self,
        policy: Backoff,
        *,
        running: bool = False,
        sleep: Sleep = asyncio.sleep,
        rng: Rng | None = None,
    ) -> None:
        self.policy = policy
        self.running = running
        self._sleep = sleep
        self._rng = rng or random.Random().random
        self.attempt = 0

    def next_delay(self) -> float:
        """The delay the next ``pause()`` sleeps (advances the backoff)."""
        delay = self.policy.delay(self.attempt, self._rng)
        self.attempt += 1
        return delay

    async def pause(self, delay: float | None = None) -> None:
        """Sleep ``delay`` (default: the next delay of the backoff)."""
        await self._sleep(self.next_delay() if delay is None else delay)

    def reset(self) -> None:
        self.attempt = 0

    def retries(self, exc: BaseException) -> bool:
        """Whether this loop tries again after ``exc``."""
        return retryable(exc, running=self.running)


async def retry(
    op: Callable[[], Awaitable[T]],
    backoff: Retry,
    on_error: Callable[[OverlaydError, float], None],
) -> T:
    """``await op()`` until it succeeds; a retryable error is reported to ``on_error`` with
    the delay before the next try, anything else propagates."""
    while True:
        try:
            return await op()
        except OverlaydError as exc:
            if not backoff.retries(exc):
                raise
            delay = backoff.next_delay()
            on_error(exc, delay)
            await backoff.pause(delay)
