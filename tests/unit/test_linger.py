"""Addresses that linger after we leave them (overlayd/planning/linger.py)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from overlayd.planning.linger import Linger, linger_for
from overlayd.probe.settings import ProbeConfig

A, B = IPv4Network("10.244.1.0/24"), IPv4Network("10.244.2.0/24")
PRIV, PUB, OTHER = IPv4Address("10.0.0.2"), IPv4Address("198.51.100.2"), IPv4Address("192.0.2.9")


def test_empty() -> None:
    linger = Linger(10.0)
    assert linger.addresses == {}
    assert linger.expire({A, B}, 1e9) == set()


def test_left_address_lingers_until_it_expires() -> None:
    linger = Linger(10.0)
    assert linger.left(A, PUB, PRIV, (PRIV, PUB), now=100.0)
    assert linger.addresses == {A: PUB}
    assert linger.expire({A}, 109.9) == set()
    assert linger.expire({B}, 200.0) == set()  # only the subnets asked about
    assert linger.expire({A}, 110.0) == {A}
    assert linger.addresses == {}


def test_many_peers_independent() -> None:
    linger = Linger(5.0)
    linger.left(A, PUB, PRIV, (PRIV, PUB), now=0.0)
    linger.left(B, OTHER, PRIV, (PRIV, OTHER), now=3.0)
    assert linger.addresses == {A: PUB, B: OTHER}
    assert linger.expire({A, B}, 6.0) == {A}
    assert linger.addresses == {B: OTHER}


def test_nothing_lingers_that_the_peer_no_longer_publishes_or_we_did_not_leave() -> None:
    linger = Linger(10.0)
    assert not linger.left(A, None, PRIV, (PRIV,), now=0.0)  # a new peer
    assert not linger.left(A, PRIV, PRIV, (PRIV,), now=0.0)  # no move
    assert not linger.left(A, OTHER, PRIV, (PRIV, PUB), now=0.0)  # not published any more
    assert linger.addresses == {}


def test_a_new_move_replaces_and_forget_drops() -> None:
    linger = Linger(10.0)
    linger.left(A, PUB, PRIV, (PRIV, PUB), now=0.0)
    assert linger.left(A, PRIV, PUB, (PRIV, PUB), now=1.0)  # failed over again
    assert linger.addresses == {A: PRIV}
    assert linger.expire({A}, 10.5) == set()  # the new entry's time, not the old one's
    linger.forget(A)
    assert linger.addresses == {}


def test_default_linger_covers_a_peer_one_slow_probe_interval_behind() -> None:
    config = ProbeConfig()
    lag = config.slow_interval * (1 + config.jitter) + config.timeout
    assert linger_for(config.slow_interval, config.jitter, config.timeout) >= 1.5 * lag
