"""The prober paces its probes: an idle peer's paths are probed at the idle intervals, and
a peer that turns fast is probed at once (no root: probes to sinks on loopback).

Each peer's one candidate is its own loopback address, where a plain UDP socket counts
the probes that arrive (nothing answers: the counts are of probes sent, paths stay
unverified). The test waits on counts, never on durations.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from ipaddress import IPv4Address

from overlayd.probe.prober import Prober
from overlayd.probe.settings import PeerTarget, ProbeConfig
from overlayd.values.keys import PrivateKey
from tests.component.agent_harness import LOOPBACK, TIMEOUT

FAST = ProbeConfig(
    port=0, bind=LOOPBACK, fast_interval=0.02, slow_interval=0.02, timeout=0.01,
    initial_spread=0.0, idle_interval=3600.0, idle_slow_interval=3600.0, tick=0.01,
)  # fmt: skip
BUSY, QUIET = IPv4Address("127.0.0.2"), IPv4Address("127.0.0.3")
TWENTY = {f"idle{i}": IPv4Address(f"127.0.1.{i + 1}") for i in range(20)}  # idle peers


@contextmanager
def sink(address: IPv4Address, port: int) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((str(address), port))
        sock.setblocking(False)
        yield sock
    finally:
        sock.close()


def drain(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            sock.recv(2048)
        except BlockingIOError:
            return n
        n += 1


async def count_until(busy: socket.socket, quiet: socket.socket, want: int) -> tuple[int, int]:
    """Probes at each sink until ``busy`` has seen ``want`` more (fails after TIMEOUT)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    seen = [0, 0]
    while seen[0] < want:
        assert loop.time() < deadline, f"only {seen[0]} of {want} probes"
        await asyncio.sleep(0.01)
        seen[0] += drain(busy)
        seen[1] += drain(quiet)
    return seen[0], seen[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_idle_peer_is_probed_slowly_until_it_turns_fast() -> None:
    async def body() -> None:
        port = free_port()
        prober: Prober[str] = Prober(PrivateKey.generate(), FAST)
        peers = {
            name: PeerTarget(PrivateKey.generate().public_key(), (address,), port=port)
            for name, address in (("busy", BUSY), ("quiet", QUIET))
        }
        with sink(BUSY, port) as busy, sink(QUIET, port) as quiet:
            await prober.start()
            try:
                prober.pace(idle=["quiet"])
                prober.set_peers(peers)
                prober.set_chosen("busy", BUSY)
                prober.set_chosen("quiet", QUIET)
                _, to_quiet = await count_until(busy, quiet, 50)
                assert to_quiet <= 1  # its first probe; the next one is an hour away
                prober.pace(fast=["quiet"])  # traffic: probed at once, and fast from then on
                await count_until(quiet, busy, 20)
            finally:
                await prober.close()

    asyncio.run(body())


def test_a_peer_that_is_idle_stays_idle_across_set_peers() -> None:
    async def body() -> None:
        port = free_port()
        prober: Prober[str] = Prober(PrivateKey.generate(), FAST)
        key = PrivateKey.generate().public_key()
        with sink(BUSY, port) as busy, sink(QUIET, port) as quiet:
            await prober.start()
            try:
                prober.pace(idle=["quiet"])
                prober.set_peers({"quiet": PeerTarget(key, (QUIET,), port=port)})
                prober.set_chosen("quiet", QUIET)
                prober.set_peers(
                    {
                        "quiet": PeerTarget(key, (QUIET,), port=port),
                        "busy": PeerTarget(key, (BUSY,), port=port),
                    }
                )
                _, to_quiet = await count_until(busy, quiet, 50)
                assert to_quiet <= 1
            finally:
                await prober.close()

    asyncio.run(body())


def test_many_idle_peers_are_each_probed_and_a_fast_one_more_often() -> None:
    """Twenty idle peers and one fast one share the ticks: every idle peer gets its probes
    (none starves behind the others), the fast one several times as many."""

    async def body() -> None:
        port = free_port()
        config = replace(FAST, idle_interval=0.3, idle_slow_interval=0.3, tick=0.05)
        prober: Prober[str] = Prober(PrivateKey.generate(), config)
        idle = TWENTY
        with contextlib.ExitStack() as stack:
            sinks = {p: stack.enter_context(sink(a, port)) for p, a in idle.items()}
            busy = stack.enter_context(sink(BUSY, port))
            await prober.start()
            try:
                key = PrivateKey.generate().public_key()
                targets = {
                    p: PeerTarget(key, (a,), port=port) for p, a in {**idle, "busy": BUSY}.items()
                }
                prober.set_peers(targets)
                prober.pace(idle=idle)
                for peer, address in {**idle, "busy": BUSY}.items():
                    prober.set_chosen(peer, address)
                counts = dict.fromkeys(idle, 0)
                fast = 0
                loop = asyncio.get_running_loop()
                deadline = loop.time() + TIMEOUT
                while min(counts.values()) < 3:
                    assert loop.time() < deadline, f"idle peers starved: {counts}"
                    await asyncio.sleep(0.01)
                    for peer, sock in sinks.items():
                        counts[peer] += drain(sock)
                    fast += drain(busy)
                assert fast > 2 * max(counts.values())
            finally:
                await prober.close()

    asyncio.run(body())


async def each_probed(sinks: list[socket.socket]) -> None:
    """Until every sink has seen a probe (draining them all; fails after TIMEOUT)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    seen: set[int] = set()
    while len(seen) < len(sinks):
        assert loop.time() < deadline, f"{len(sinks) - len(seen)} never probed"
        await asyncio.sleep(0.01)
        seen.update(i for i, s in enumerate(sinks) if drain(s))


def test_peers_turning_idle_together_are_spread_over_their_idle_interval() -> None:
    """Peers that turn idle at once (every peer, once its start-up hold ends) must not all
    be probed again at once: each one's next probe moves to a random point of its idle
    interval (an hour here), so none of twenty gets the fast probe it had due next."""

    async def body() -> None:
        port = free_port()
        prober: Prober[str] = Prober(PrivateKey.generate(), FAST)
        idle = TWENTY
        with contextlib.ExitStack() as stack:
            sinks = [stack.enter_context(sink(a, port)) for a in idle.values()]
            busy = stack.enter_context(sink(BUSY, port))
            other = stack.enter_context(sink(QUIET, port))  # no peer's: stays empty
            await prober.start()
            try:
                key = PrivateKey.generate().public_key()
                every = {**idle, "busy": BUSY}
                prober.set_peers({p: PeerTarget(key, (a,), port=port) for p, a in every.items()})
                for peer, address in every.items():
                    prober.set_chosen(peer, address)
                await each_probed(sinks)  # each probed fast at least once
                prober.pace(idle=idle)  # no probe was sent since the sinks were drained
                await count_until(busy, other, 30)  # ~30 fast intervals pass meanwhile
                assert sum(drain(s) for s in sinks) <= len(sinks) // 4
            finally:
                await prober.close()

    asyncio.run(body())


def test_a_new_path_of_an_idle_peer_keeps_its_first_probe() -> None:
    """Spreading a peer that turns idle never postpones a path's first probe: a new path
    is probed within ``initial_spread`` (0 here) whatever its pace."""

    async def body() -> None:
        port = free_port()
        prober: Prober[str] = Prober(PrivateKey.generate(), FAST)
        idle = TWENTY
        with contextlib.ExitStack() as stack:
            sinks = [stack.enter_context(sink(a, port)) for a in idle.values()]
            key = PrivateKey.generate().public_key()
            prober.set_peers({p: PeerTarget(key, (a,), port=port) for p, a in idle.items()})
            prober.pace(idle=idle)
            await prober.start()
            try:
                await each_probed(sinks)
            finally:
                await prober.close()

    asyncio.run(body())


async def until_true(check: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_a_vouched_idle_path_is_not_probed() -> None:
    """Two probers on loopback answer each other; once ``a``'s path to ``b`` is verified
    and idle, vouching for it (as a live WireGuard session does) stands in for probes."""

    async def body() -> None:
        key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
        config = replace(FAST, idle_interval=1.0)
        a: Prober[str] = Prober(key_a, replace(config, bind=BUSY))
        b: Prober[str] = Prober(key_b, replace(config, bind=QUIET, idle_interval=3600.0))
        await a.start()
        await b.start()
        try:
            b.pace(idle=["a"])  # b's own probes stay out of the count
            b.set_peers({"a": PeerTarget(key_a.public_key(), (BUSY,), port=a.port)})
            a.set_peers({"b": PeerTarget(key_b.public_key(), (QUIET,), port=b.port)})
            a.set_chosen("b", QUIET)
            await until_true(lambda: a.stats("b")[QUIET].verified, "a verifies b")
            a.pace(idle=["b"])
            await asyncio.sleep(config.fast_interval * 2)  # fast probes still due go out
            before = b.counters.probes_received
            for _ in range(30):  # 3 s: three idle probes' worth, were nothing vouching
                a.vouch("b", QUIET)
                await asyncio.sleep(0.1)
            assert b.counters.probes_received - before <= 1
            assert a.stats("b")[QUIET].verified
            vouched = b.counters.probes_received
            await until_true(lambda: b.counters.probes_received >= vouched + 2, "idle probes")
            a.vouch("b", BUSY)  # not one of b's paths: nothing happens
        finally:
            await a.close()
            await b.close()

    asyncio.run(body())
