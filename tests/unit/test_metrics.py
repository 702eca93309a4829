"""The metric families (overlayd/agent/metrics.py) on a registry of the test's own: every
family present with zeros when nothing happened, counts when it did, bounded labels."""

from __future__ import annotations

from collections import Counter
from ipaddress import IPv4Address, IPv4Network

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from overlayd.agent.metrics import (
    MAX_SITES,
    PATH_KINDS,
    Metrics,
    NodeState,
    WireGuardTotals,
    node_families,
    path_kinds,
    probe_families,
    store_families,
)
from overlayd.planning.probe_pace import PeerSample
from overlayd.probe.settings import ProbeCounters
from overlayd.probe.wire import Reject
from overlayd.store.keyspace import StoreCounters
from overlayd.values.kernel_state import Changes, RouteEntry
from overlayd.values.paths import PRIVATE, PUBLIC, PeerPath

FAMILIES = {
    "overlayd_path_changes": "counter",
    "overlayd_probe_rtt_seconds": "histogram",
    "overlayd_reconcile_passes": "counter",
    "overlayd_reconcile_duration_seconds": "histogram",
    "overlayd_kernel_operations": "counter",
    "overlayd_kernel_operation_failures": "counter",
    "overlayd_gateway_elections": "counter",
    "overlayd_peers": "gauge",
    "overlayd_lease_held": "gauge",
    "overlayd_lease_ttl_remaining_seconds": "gauge",
    "overlayd_gateway_role": "gauge",
    "overlayd_wireguard_peers": "gauge",
    "overlayd_wireguard_handshake_age_max_seconds": "gauge",
    "overlayd_wireguard_bytes": "gauge",
    "overlayd_dns_queries": "counter",
    "overlayd_dns_names": "gauge",
    "overlayd_probes_sent": "counter",
    "overlayd_probe_rejects": "counter",
    "overlayd_store_errors": "counter",
    "overlayd_store_watch_reconnects": "counter",
}


def _metrics(
    state: NodeState | None = None,
    probes: ProbeCounters | None = None,
    store: StoreCounters | None = None,
) -> Metrics:
    """A ``Metrics`` with the node, probe and store families, as the composition root has."""
    metrics = Metrics(CollectorRegistry())
    metrics.scrape(lambda: node_families(state or NodeState()))
    metrics.scrape(lambda: probe_families(probes or ProbeCounters()))
    metrics.scrape(lambda: store_families(store or StoreCounters()))
    return metrics


def scrape(metrics: Metrics) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """Family name -> {(sample name, sorted labels): value}, parsed as Prometheus would."""
    out: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for family in text_string_to_metric_families(metrics.text()):
        samples = out.setdefault(family.name, {})
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def test_nothing_happened_every_family_is_there_with_zeros() -> None:
    metrics = _metrics()
    kinds = {f.name: f.type for f in text_string_to_metric_families(metrics.text())}
    assert {n: kinds.get(n) for n in FAMILIES} == FAMILIES
    found = scrape(metrics)
    for name in FAMILIES:
        if name == "overlayd_probe_rtt_seconds":
            assert found[name] == {}  # no site seen yet: no series
            continue
        assert all(v == 0 for v in found[name].values()), (name, found[name])
    assert {dict(k[1])["kind"] for k in found["overlayd_peers"]} == set(PATH_KINDS)
    assert {dict(k[1])["reason"] for k in found["overlayd_probe_rejects"]} == {
        r.value for r in Reject
    }


def test_events_are_counted() -> None:
    metrics = _metrics()
    metrics.path_changed(PeerPath(IPv4Address("10.0.0.2"), PRIVATE, "same site"))
    metrics.path_changed(None)
    metrics.path_changed(None)
    metrics.probe_rtt("aws", 0.002)
    metrics.probe_rtt("aws", 0.030)
    metrics.probe_rtt("gcp", 0.2)
    metrics.reconcile_pass(0.004, ok=True)
    metrics.reconcile_pass(0.3, ok=False)
    route = RouteEntry(IPv4Network("10.244.2.0/24"), IPv4Address("10.244.2.0"))
    metrics.kernel_applied("vxlan", Changes(set_routes=(route,), del_routes=(route, route)), 1)
    metrics.wireguard_applied(3, 1, 0)
    metrics.gateway_election("won")
    found = scrape(metrics)
    changes = found["overlayd_path_changes"]
    assert value(changes, "overlayd_path_changes_total", kind="private") == 1
    assert value(changes, "overlayd_path_changes_total", kind="none") == 2
    assert value(changes, "overlayd_path_changes_total", kind="public") == 0
    rtt = found["overlayd_probe_rtt_seconds"]
    assert value(rtt, "overlayd_probe_rtt_seconds_count", site="aws") == 2
    assert value(rtt, "overlayd_probe_rtt_seconds_bucket", site="aws", le="0.0025") == 1
    assert value(rtt, "overlayd_probe_rtt_seconds_bucket", site="aws", le="0.05") == 2
    assert value(rtt, "overlayd_probe_rtt_seconds_count", site="gcp") == 1
    passes = found["overlayd_reconcile_passes"]
    assert value(passes, "overlayd_reconcile_passes_total", result="ok") == 1
    assert value(passes, "overlayd_reconcile_passes_total", result="error") == 1
    duration = found["overlayd_reconcile_duration_seconds"]
    assert value(duration, "overlayd_reconcile_duration_seconds_count") == 2
    assert value(duration, "overlayd_reconcile_duration_seconds_bucket", le="0.005") == 1
    ops = found["overlayd_kernel_operations"]
    total = "overlayd_kernel_operations_total"
    assert value(ops, total, device="vxlan", entry="route", op="set") == 1
    assert value(ops, total, device="vxlan", entry="route", op="delete") == 2
    assert value(ops, total, device="vxlan", entry="fdb", op="set") == 0
    assert value(ops, total, device="wireguard", entry="peer", op="add") == 3
    assert value(ops, total, device="wireguard", entry="peer", op="update") == 1
    failed = found["overlayd_kernel_operation_failures"]
    assert value(failed, "overlayd_kernel_operation_failures_total", device="vxlan") == 1
    elections = found["overlayd_gateway_elections"]
    assert value(elections, "overlayd_gateway_elections_total", result="won") == 1
    assert value(elections, "overlayd_gateway_elections_total", result="resigned") == 0


def test_sites_beyond_the_cap_share_one_label() -> None:
    metrics = _metrics()
    for n in range(MAX_SITES * 4):
        metrics.probe_rtt(f"site{n}", 0.001)
    metrics.probe_rtt("site0", 0.001)  # one of the first: keeps its own label
    rtt = scrape(metrics)["overlayd_probe_rtt_seconds"]
    sites = {dict(k[1])["site"] for k in rtt}
    assert len(sites) == MAX_SITES + 1
    assert value(rtt, "overlayd_probe_rtt_seconds_count", site="other") == MAX_SITES * 3
    assert value(rtt, "overlayd_probe_rtt_seconds_count", site="site0") == 2


def test_a_hostile_site_name_is_escaped_not_injected() -> None:
    metrics = _metrics()
    hostile = 'x"} overlayd_peers{kind="private"} 1e9\n# TYPE'
    metrics.probe_rtt(hostile, 0.001)
    found = scrape(metrics)
    rtt = found["overlayd_probe_rtt_seconds"]
    assert value(rtt, "overlayd_probe_rtt_seconds_count", site=hostile) == 1
    assert value(found["overlayd_peers"], "overlayd_peers", kind="private") == 0


def test_peers_by_path_kind() -> None:
    def net(n: int) -> IPv4Network:
        return IPv4Network(f"10.244.{n}.0/24")

    def path(kind: str) -> PeerPath:
        return PeerPath(IPv4Address("192.0.2.1"), kind, "test")

    assert path_kinds([], {}, set(), set(), set()) == dict.fromkeys(PATH_KINDS, 0)
    paths = {
        net(1): path(PRIVATE),
        net(2): path(PUBLIC),
        net(3): path(PUBLIC),
        net(4): path(PRIVATE),
    }
    paths[net(6)] = path(PUBLIC)
    kinds = path_kinds(
        [net(n) for n in range(1, 8)],
        paths,
        verified={net(1), net(2), net(3)},  # 4: chosen, unverified
        via={net(5)},  # reached through our gateway (no path of its own)
        relayed={net(6)},  # relayed wins over its own unverified path
    )  # 7: no path at all
    assert kinds == {
        "private": 1, "public": 2, "punched": 0, "relayed": 1, "gateway": 1, "unverified": 1,
        "none": 1,
    }  # fmt: skip
    state = NodeState(kinds, lease_ttl=41.5, role="member")
    found = scrape(_metrics(state))
    assert value(found["overlayd_peers"], "overlayd_peers", kind="public") == 2
    assert value(found["overlayd_lease_held"], "overlayd_lease_held") == 1
    ttl = found["overlayd_lease_ttl_remaining_seconds"]
    assert value(ttl, "overlayd_lease_ttl_remaining_seconds") == 41.5
    roles = found["overlayd_gateway_role"]
    assert {dict(k[1])["role"]: v for k, v in roles.items()} == {
        "gateway": 0, "member": 1, "mesh": 0, "waiting": 0,
    }  # fmt: skip


def test_wireguard_totals() -> None:
    assert WireGuardTotals.of([]) == WireGuardTotals()
    assert WireGuardTotals.of([PeerSample(idle_for=3.0)]) == WireGuardTotals()  # VXLAN only
    samples = [
        PeerSample(wg_bytes=300, wg_rx=100, wg_handshake_age=5.0),
        PeerSample(wg_bytes=50, wg_rx=50, wg_handshake_age=400.0),
        PeerSample(wg_bytes=0, wg_rx=0),
    ]
    totals = WireGuardTotals.of(samples)
    assert totals == WireGuardTotals(recent=1, stale=1, never=1, rx_bytes=150, tx_bytes=200,
                                     oldest_handshake=400.0)  # fmt: skip
    found = scrape(_metrics(NodeState(wireguard=totals)))
    wg = found["overlayd_wireguard_bytes"]
    assert value(wg, "overlayd_wireguard_bytes", direction="rx") == 150
    assert value(wg, "overlayd_wireguard_bytes", direction="tx") == 200
    peers = found["overlayd_wireguard_peers"]
    assert value(peers, "overlayd_wireguard_peers", handshake="stale") == 1
    age = found["overlayd_wireguard_handshake_age_max_seconds"]
    assert value(age, "overlayd_wireguard_handshake_age_max_seconds") == 400


def test_counters_read_at_scrape_time() -> None:
    probes, store = ProbeCounters(), StoreCounters()
    dns = {"queries": 10, "answered": 5, "nxdomain": 2, "refused": 1, "malformed": 1,
           "dropped": 0, "names": 7}  # fmt: skip
    metrics = _metrics(NodeState(dns=dns), probes, store)
    probes.probes_sent += 4
    probes.rejected.update(Counter({Reject.MAC: 3, Reject.REPLAY: 1}))
    store.errors += 2
    store.watch_reconnects += 1
    found = scrape(metrics)  # after the changes: read now, not at registration
    rejects = found["overlayd_probe_rejects"]
    assert value(rejects, "overlayd_probe_rejects_total", reason="mac") == 3
    assert value(rejects, "overlayd_probe_rejects_total", reason="replay") == 1
    assert value(rejects, "overlayd_probe_rejects_total", reason="stale") == 0
    assert value(found["overlayd_probes_sent"], "overlayd_probes_sent_total") == 4
    assert value(found["overlayd_store_errors"], "overlayd_store_errors_total") == 2
    reconnects = found["overlayd_store_watch_reconnects"]
    assert value(reconnects, "overlayd_store_watch_reconnects_total") == 1
    queries = found["overlayd_dns_queries"]
    assert value(queries, "overlayd_dns_queries_total", result="answered") == 5
    assert value(queries, "overlayd_dns_queries_total", result="other") == 1  # e.g. NOTIMP
    assert value(found["overlayd_dns_names"], "overlayd_dns_names") == 7


def test_two_registries_do_not_share_counts() -> None:
    first, second = _metrics(), _metrics()
    first.gateway_election("resigned")
    found = scrape(second)["overlayd_gateway_elections"]
    assert value(found, "overlayd_gateway_elections_total", result="resigned") == 0
