"""The one retry policy (overlayd/runtime/retry.py): delays, cap, jitter, and who is retried."""

from __future__ import annotations

import asyncio

import pytest

from overlayd.runtime.retry import FIXED_1S, Backoff, Retry, retry, retryable
from overlayd.values.errors import (
    ConfigError,
    ConfigMissingError,
    EtcdTlsError,
    KernelError,
    OverlaydError,
    PoolExhaustedError,
    StoreError,
    WireGuardError,
)


class Sleeps:
    """An injected sleep: records each delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def no_jitter() -> float:
    return 0.0


def test_backoff_doubles_up_to_the_cap() -> None:
    policy = Backoff(first=1.0, cap=10.0)
    assert [policy.delay(n, no_jitter) for n in range(6)] == [1, 2, 4, 8, 10, 10]
    assert policy.delay(10_000, no_jitter) == 10.0  # no overflow on long outages


def test_jitter_only_shortens() -> None:
    policy = Backoff(first=1.0, cap=10.0, jitter=0.1)
    assert policy.delay(5, lambda: 0.999) == pytest.approx(9.001)
    assert policy.delay(5, no_jitter) == 10.0
    assert FIXED_1S.delay(7, no_jitter) == 1.0


def test_errors_say_whether_they_are_retried() -> None:
    for transient in (
        StoreError("x"),
        ConfigMissingError("x"),
        PoolExhaustedError("x"),
        KernelError("x"),
        WireGuardError("x"),
    ):
        assert retryable(transient), transient
    for permanent in (ConfigError("x"), EtcdTlsError("x"), OverlaydError("x"), ValueError()):
        assert not retryable(permanent), permanent
    assert EtcdTlsError.exit_code == 2 and StoreError.exit_code == 1


def test_a_running_daemon_retries_every_store_error() -> None:
    """Certificates refused at the first contact end the daemon (exit 2); once it runs,
    they are logged and retried like any store failure (docs/etcd-access.md)."""
    assert retryable(EtcdTlsError("x"), running=True)
    assert not retryable(ConfigError("x"), running=True)
    assert Retry(Backoff(), running=True).retries(EtcdTlsError("x"))
    assert not Retry(Backoff()).retries(EtcdTlsError("x"))


def test_retry_until_success_with_growing_delays_then_reset() -> None:
    sleeps = Sleeps()
    failures: list[OverlaydError] = [StoreError("a"), KernelError("b"), StoreError("c")]
    reported: list[tuple[str, float]] = []

    async def op() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    backoff = Retry(Backoff(first=1.0, cap=3.0), sleep=sleeps, rng=no_jitter)
    result = asyncio.run(retry(op, backoff, lambda exc, d: reported.append((str(exc), d))))
    assert result == "done"
    assert sleeps.delays == [1.0, 2.0, 3.0]
    assert reported == [("a", 1.0), ("b", 2.0), ("c", 3.0)]
    backoff.reset()
    assert backoff.next_delay() == 1.0


def test_a_permanent_error_propagates_at_once() -> None:
    sleeps = Sleeps()

    async def op() -> None:
        raise EtcdTlsError("certificate refused")

    backoff = Retry(Backoff(), sleep=sleeps, rng=no_jitter)
    with pytest.raises(EtcdTlsError):
        asyncio.run(retry(op, backoff, lambda exc, d: None))
    assert sleeps.delays == []
