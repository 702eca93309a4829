"""Churn lines (logs.Churn, overlayd/agent/churnlog.py) and PathKeeper's "that record is us"."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from overlayd.agent.churnlog import change_counts, lease_counts, summary, wireguard_counts
from overlayd.agent.path_keeper import PathKeeper
from overlayd.disk.node_key import NodeKey
from overlayd.probe.settings import ProbeConfig
from overlayd.runtime.logs import Churn
from overlayd.values.kernel_state import Changes, RouteEntry
from overlayd.values.lease import LeaseRecord
from tests.builders import lease


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Later:
    """A hand-cranked ``call_later``."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls: list[tuple[float, Callable[[], None]]] = []

    def __call__(self, delay: float, callback: Callable[[], None]) -> object:
        self.calls.append((self.clock.now + delay, callback))
        return None

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        due = [c for c in self.calls if c[0] <= self.clock.now]
        self.calls = [c for c in self.calls if c[0] > self.clock.now]
        for _, callback in due:
            callback()


def count_summary(counts: Mapping[str, int], seconds: float) -> str:
    return f"+{counts.get('joined', 0)} -{counts.get('left', 0)} in {seconds:.1f} s"


def make(burst: int = 3) -> tuple[list[str], Churn, Later]:
    lines: list[str] = []
    clock = Clock()
    later = Later(clock)
    return lines, Churn(lines.append, count_summary, 1.0, clock, later, burst=burst), later


def test_a_single_change_on_a_quiet_log_gets_its_own_lines() -> None:
    lines, churn, later = make()
    churn.note(lease_counts("joined"), "peer a joined")
    later.advance(0.01)
    churn.note({"vxlan passes": 1}, "reconciled 3 peers on vxlan")  # the pass it caused
    later.advance(5)
    churn.note(lease_counts("left"), lambda: "peer a left")
    later.advance(5)
    assert lines == ["peer a joined", "reconciled 3 peers on vxlan", "peer a left"]


def test_churn_gives_one_summary_per_interval() -> None:
    lines, churn, later = make()
    for _ in range(10):  # 10 s at 200 events/s
        for i in range(200):
            churn.note(lease_counts("joined" if i % 2 else "left"), lambda: "own line")
            later.advance(1 / 200)
    later.advance(2)  # the last summary comes without another event
    assert lines[:3] == ["own line"] * 3  # the start of the burst, on a quiet log
    summaries = lines[3:]
    assert 9 <= len(summaries) <= 11, lines
    assert all(line.endswith(" s") for line in summaries)
    total = sum(int(w[1:]) for line in summaries for w in line.split()[:2])
    assert total == 2000 - 3  # every other event is counted in some summary
    later.advance(1.0)
    churn.note(lease_counts("joined"), "quiet again")
    assert lines[-1] == "quiet again"


def test_flush_without_a_scheduler_waits_for_the_interval() -> None:
    lines: list[str] = []
    clock = Clock()
    churn = Churn(lines.append, count_summary, 1.0, clock, burst=1)
    churn.note({"joined": 1}, "first")
    churn.note({"joined": 1}, "second")
    churn.flush()
    assert lines == ["first"]
    clock.now += 1.0
    churn.flush()
    assert lines == ["first", "+1 -0 in 1.0 s"]


def test_summary_names_what_was_counted() -> None:
    route = RouteEntry(IPv4Network("10.244.1.0/24"), IPv4Address("10.244.1.0"))
    counts: Counter[str] = Counter()
    for _ in range(2):
        counts.update(change_counts("vxlan", Changes(set_routes=(route,))))
    counts.update(lease_counts("joined"))
    line = summary(counts, 1.0)
    assert line == (
        "leases: +1 joined, -0 left, ~0 changed; "
        "vxlan: 2 passes, +2/-0 routes, +0/-0 neigh, +0/-0 fdb in the last 1.0 s"
    )
    assert summary(wireguard_counts(1, 0, 2), 1.0) == "WireGuard peers: +1 ~0 -2 in the last 1.0 s"


def record(subnet: str, node: str, node_id: str, key: NodeKey) -> LeaseRecord:
    return lease(
        subnet,
        "192.0.2.1",
        node=node,
        node_id=node_id,
        private_ips=("192.0.2.1",),
        public_key=key.public.base64,
        probe_port=8473,
    )


def test_our_record_under_another_subnet_is_not_a_peer(tmp_path: Path) -> None:
    """After our subnet moved, our old record (or the new one, seen before the keeper
    switched) is us: not probed, not in /peers."""
    key = NodeKey.load_or_create(tmp_path / "me")
    other = NodeKey.load_or_create(tmp_path / "peer")
    me = record("10.244.2.0/24", "me", "id-me", key)
    old_me = replace(me, subnet=IPv4Network("10.244.1.0/24"))
    peer = record("10.244.3.0/24", "peer", "id-peer", other)
    keeper = PathKeeper(key, ProbeConfig(port=0))
    records = {old_me.subnet: old_me, me.subnet: me, peer.subnet: peer}
    for subnet, rec in records.items():
        keeper.lease_changed(me, subnet, rec)
    keeper.recompute(me, records, records)
    assert sorted(keeper.paths) == [peer.subnet]
    assert [r.node for r in keeper.report(records, {})] == ["peer"]
    assert set(keeper.prober.stats(old_me.subnet)) == set()  # never probed


def test_a_peer_of_another_site_with_only_private_addresses_is_reported_with_why(
    tmp_path: Path,
) -> None:
    """No public address published, none learned: no path, no probe, no guess -- and
    ``/peers`` says so instead of leaving the peer out."""
    key = NodeKey.load_or_create(tmp_path / "me")
    me = record("10.244.2.0/24", "me", "id-me", key)
    far = replace(
        record("10.244.3.0/24", "far", "id-far", NodeKey.load_or_create(tmp_path / "far")),
        site="b", public_ip=IPv4Address("10.0.2.11"), private_ips=(IPv4Address("10.0.2.11"),),
    )  # fmt: skip
    keeper = PathKeeper(key, ProbeConfig(port=0))
    records = {me.subnet: me, far.subnet: far}
    for subnet, rec in records.items():
        keeper.lease_changed(me, subnet, rec)
    keeper.recompute(me, records, records)
    assert keeper.paths == {}
    (report,) = keeper.report(records, {})
    doc = report.to_json()
    assert (doc["node"], doc["address"], doc["kind"]) == ("far", None, "none")
    assert "publishes no public address" in doc["reason"] and "--stun-server" in doc["reason"]
    keeper.lease_changed(me, far.subnet, None)
    assert keeper.report(records, {}) == []
