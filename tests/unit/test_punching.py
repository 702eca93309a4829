"""The path keeper's punch attempts (overlayd/agent/punching.py), on a clock the test
moves: which peers are punched, what the prober is asked, and the no-path reasons."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any

from overlayd.agent.punching import Punching
from overlayd.planning.path_choice import PathStats
from overlayd.planning.punch import PunchParams
from overlayd.values.lease import LeaseRecord, NodeEndpoints
from overlayd.values.paths import PeerCandidates
from overlayd.values.wireguard import Endpoint
from tests.builders import lease

ME, PEER = IPv4Network("10.244.1.0/24"), IPv4Network("10.244.2.0/24")
NAT_B = IPv4Address("203.0.113.2")
PARAMS = PunchParams(open=1.0, give_up=4.0, retry=60.0)
VERIFIED = PathStats(sent=1, received=1, verified_since=1.0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def node(subnet: IPv4Network, site: str, address: str, **fields: Any) -> LeaseRecord:
    fields.setdefault("probe_port", 8473)
    fields.setdefault("wireguard_port", 51820)
    return lease(subnet, address, site=site, private_ips=(address,), **fields)


def me() -> LeaseRecord:
    return node(ME, "a", "10.0.1.11")


def peer(**fields: Any) -> LeaseRecord:
    fields.setdefault("endpoints", NodeEndpoints((Endpoint(NAT_B, 8473),)))
    return node(PEER, "b", "10.0.2.11", **fields)


def update(p: Punching, record: LeaseRecord, stats: dict[IPv4Address, PathStats]) -> Any:
    found = PeerCandidates.between(me(), record)
    return p.update(me(), PEER, record, found, stats, None, 8473)


def test_nothing_to_punch_for_a_same_site_peer_or_one_without_endpoints() -> None:
    p = Punching(PARAMS, None, Clock())
    mate = node(PEER, "a", "10.0.1.12", endpoints=NodeEndpoints((Endpoint(NAT_B, 1),)))
    assert update(p, mate, {}) is None
    assert update(p, peer(endpoints=NodeEndpoints()), {}) is None
    assert update(p, peer(wireguard_port=None), {}) is None


def test_an_attempt_asks_for_probes_after_opening_and_fails_with_the_reason() -> None:
    clock = Clock()
    p = Punching(PARAMS, None, clock)
    first = update(p, peer(), {})
    assert first.endpoints == (Endpoint(NAT_B, 8473),) and first.probe_from == 101.0
    assert first.reason is not None and first.reason.startswith("punching through its NAT")
    clock.now = 106.0
    failed = update(p, peer(), {})
    assert failed.endpoints == () and "gave up" in failed.reason
    clock.now = 161.0  # the retry: probing again, on the grid of the first attempt
    again = update(p, peer(), {})
    assert again.endpoints and again.probe_from == 161.0


def test_a_verified_endpoint_is_punched_and_a_direct_path_ends_the_attempt() -> None:
    clock = Clock()
    p = Punching(PARAMS, None, clock)
    update(p, peer(), {})
    clock.now = 101.5
    done = update(p, peer(), {NAT_B: VERIFIED})
    assert done.reason is None and done.endpoints == (Endpoint(NAT_B, 8473),)
    public = IPv4Address("192.0.2.9")  # it moved to a public address of its own
    direct = node(PEER, "b", str(public), public_ips=(public,),
                  endpoints=NodeEndpoints((Endpoint(NAT_B, 8473),)))  # fmt: skip
    assert update(p, direct, {public: VERIFIED}) is None


def test_many_peers_have_their_own_attempts() -> None:
    clock = Clock()
    p = Punching(PARAMS, None, clock)
    for i in range(3, 40):
        subnet = IPv4Network(f"10.244.{i}.0/24")
        record = node(subnet, "b", "10.0.2.11",
                      endpoints=NodeEndpoints((Endpoint(NAT_B, 1000 + i),)))  # fmt: skip
        found = PeerCandidates.between(me(), record)
        got = p.update(me(), subnet, record, found, {}, None, 8473)
        assert got is not None and got.endpoints == (Endpoint(NAT_B, 1000 + i),)
        clock.now += 0.01
