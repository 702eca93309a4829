"""The daemon's Prometheus metrics (``/metrics`` on the status port): every family's name,
type, labels and help text is defined here, and nowhere else (docs/metrics.md).

Two kinds of family. Events that must be counted as they happen (a path change, a probe
RTT, a reconcile pass, kernel operations, an election) are prometheus_client counters and
histograms, bumped by one-line hooks (``Metrics``' methods). Everything else is read at
scrape time from what the daemon already keeps (peers by path kind, the lease's TTL, the
role, WireGuard handshakes and bytes, the prober's, the store's and the DNS responder's
counters): a collector registered with ``Metrics.scrape`` turns those values into families
(``node_families``, ``probe_families``, ``store_families``), so nothing is counted twice.

Label sets are bounded: kinds, reasons, devices and results are fixed sets, sites are
capped at ``MAX_SITES`` (the rest are ``other``) and no family has a per-peer label, so a
scrape's size does not grow with the number of peers. The registry is the caller's (the
composition root makes one per daemon): never prometheus_client's global one.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from overlayd.planning.probe_pace import PeerSample
from overlayd.probe.settings import ProbeCounters
from overlayd.probe.wire import Reject
from overlayd.store.keyspace import StoreCounters
from overlayd.values.kernel_state import Changes
from overlayd.values.paths import PRIVATE, PUBLIC, PUNCHED, PeerPath

CONTENT_TYPE = "text/plain; version=0.0.4"
"""The text exposition format's content type (aiohttp adds the charset, utf-8)."""

MAX_SITES = 64
"""Distinct ``site`` labels of the probe RTT histogram; further sites are ``other``."""
OTHER_SITE = "other"

RELAYED, GATEWAY, UNVERIFIED, NONE = "relayed", "gateway", "unverified", "none"
PATH_KINDS = (PRIVATE, PUBLIC, PUNCHED, RELAYED, GATEWAY, UNVERIFIED, NONE)
"""A peer's path as ``overlayd_peers`` counts it: verified private/public/punched, through
a relay or our site's gateway, chosen but not verified, or no path at all."""
ROLES = ("gateway", "member", "mesh", "waiting")  # overlayd/planning/gateway.py
ELECTIONS = ("won", "resigned")
DEVICES = ("vxlan", "wireguard")
ENTRIES = ("route", "neigh", "fdb")
DNS_RESULTS = ("answered", "nxdomain", "refused", "malformed", "dropped", "other")
WG_FRESH = 180.0
"""Seconds after which a WireGuard handshake is stale: the session would be rejected
(WireGuard's REJECT_AFTER_TIME)."""

RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
PASS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The event families on ``registry``, and the collectors read at scrape time."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._sites: set[str] = set()
        self._path_changes = Counter(
            "overlayd_path_changes_total",
            "Changes of a peer's chosen underlay path, by the kind of the new one.",
            ["kind"], registry=registry,
        )  # fmt: skip
        self._rtt = Histogram(
            "overlayd_probe_rtt_seconds",
            "Round-trip times of answered probes, by the peer's site.",
            ["site"], buckets=RTT_BUCKETS, registry=registry,
        )  # fmt: skip
        self._passes = Counter(
            "overlayd_reconcile_passes_total", "Reconcile passes, by result.", ["result"],
            registry=registry,
        )  # fmt: skip
        self._pass_seconds = Histogram(
            "overlayd_reconcile_duration_seconds", "How long each reconcile pass took.",
            buckets=PASS_BUCKETS, registry=registry,
        )  # fmt: skip
        self._kernel = Counter(
            "overlayd_kernel_operations_total",
            "Kernel entries set or deleted on our devices (WireGuard peers too).",
            ["device", "entry", "op"], registry=registry,
        )  # fmt: skip
        self._kernel_failed = Counter(
            "overlayd_kernel_operation_failures_total",
            "Kernel operations that failed, by device.", ["device"], registry=registry,
        )  # fmt: skip
        self._elections = Counter(
            "overlayd_gateway_elections_total",
            "This node's gateway elections: won, or resigned after members' reports.",
            ["result"], registry=registry,
        )  # fmt: skip
        # every bounded label value present from the start: an empty network shows zeros
        for kind in (PRIVATE, PUBLIC, PUNCHED, NONE):
            self._path_changes.labels(kind)
        for result in ("ok", "error"):
            self._passes.labels(result)
        for device in DEVICES:
            self._kernel_failed.labels(device)
            for entry in ENTRIES:
                for op in ("set", "delete"):
                    self._kernel.labels(device, entry, op)
        for op in ("add", "update", "remove"):
            self._kernel.labels("wireguard", "peer", op)
        for result in ELECTIONS:
            self._elections.labels(result)

    # -- events (one-line hooks) -------------------------------------------------------

    def path_changed(self, path: PeerPath | None) -> None:
        """A peer's chosen path changed to ``path`` (None: it has none now)."""
        self._path_changes.labels(NONE if path is None else path.kind).inc()

    def probe_rtt(self, site: str, seconds: float) -> None:
        """A probe of a peer in ``site`` was answered after ``seconds``."""
        if site not in self._sites:
            if len(self._sites) >= MAX_SITES:
                site = OTHER_SITE
            else:
                self._sites.add(site)
        self._rtt.labels(site).observe(seconds)

    def reconcile_pass(self, seconds: float, ok: bool) -> None:
        """A reconcile pass ended (``ok``: without an error) after ``seconds``."""
        self._passes.labels("ok" if ok else "error").inc()
        self._pass_seconds.observe(seconds)

    def kernel_applied(self, device: str, changes: Changes, failed: int) -> None:
        """``changes`` were applied to ``device`` (``vxlan`` or ``wireguard``); ``failed``
        of them failed."""
        for entry, op, done in (
            ("route", "set", changes.set_routes), ("route", "delete", changes.del_routes),
            ("neigh", "set", changes.set_neighs), ("neigh", "delete", changes.del_neighs),
            ("fdb", "set", changes.set_fdbs), ("fdb", "delete", changes.del_fdbs),
        ):  # fmt: skip
            if done:
                self._kernel.labels(device, entry, op).inc(len(done))
        if failed:
            self._kernel_failed.labels(device).inc(failed)

    def wireguard_applied(self, added: int, updated: int, removed: int) -> None:
        """WireGuard peers were added, updated and removed on our device."""
        for op, count in (("add", added), ("update", updated), ("remove", removed)):
            if count:
                self._kernel.labels("wireguard", "peer", op).inc(count)

    def gateway_election(self, result: str) -> None:
        """This node won its site's gateway election, or resigned (``ELECTIONS``)."""
        self._elections.labels(result).inc()

    # -- scrape time -------------------------------------------------------------------

    def scrape(self, read: Callable[[], Iterable[Metric]]) -> None:
        """Serve the families ``read`` builds, at each scrape."""
        self.registry.register(_Scraped(read))

    def text(self) -> str:
        """The registry in the text exposition format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry).decode()


@dataclass(frozen=True)
class _Scraped:
    """A collector whose families are built at scrape time."""

    read: Callable[[], Iterable[Metric]]

    def collect(self) -> Iterable[Metric]:
        return self.read()


@dataclass(frozen=True)
class WireGuardTotals:
    """The WireGuard peers of the last traffic sample (overlayd/agent/traffic.py), summed."""

    recent: int = 0  # handshake within ``WG_FRESH``
    stale: int = 0
    never: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0
    oldest_handshake: float = 0.0  # seconds: the largest handshake age (0: none)

    @classmethod
    def of(cls, samples: Iterable[PeerSample]) -> WireGuardTotals:
        """The totals of the WireGuard part of ``samples`` (VXLAN-only ones skipped)."""
        recent = stale = never = rx = tx = 0
        oldest = 0.0
        for s in samples:
            if s.wg_bytes is None:
                continue
            received = s.wg_rx or 0
            rx, tx = rx + received, tx + s.wg_bytes - received
            age = s.wg_handshake_age
            if age is None:
                never += 1
            else:
                oldest = max(oldest, age)
                recent, stale = (recent + 1, stale) if age <= WG_FRESH else (recent, stale + 1)
        return cls(recent, stale, never, rx, tx, oldest)


@dataclass(frozen=True)
class NodeState:
    """What the daemon knows now, as the node families show it."""

    kinds: Mapping[str, int] = field(default_factory=dict)  # peers by ``PATH_KINDS``
    lease_ttl: float | None = None  # seconds our etcd lease has left (None: none held)
    role: str | None = None  # gateway topology only (``ROLES``)
    wireguard: WireGuardTotals = WireGuardTotals()
    dns: Mapping[str, int] | None = None  # the responder's counters (None: no responder)


def path_kinds(
    peers: Collection[IPv4Network],
    paths: Mapping[IPv4Network, PeerPath],
    verified: AbstractSet[IPv4Network],
    via: Collection[IPv4Network],
    relayed: Collection[IPv4Network],
) -> dict[str, int]:
    """How many of ``peers`` have each of ``PATH_KINDS`` (every kind present); ``paths``
    has only peers (the path keeper's).

    An ``IPv4Network``'s hash is Python code: a scrape at 5,000 peers spent most of its
    time in it when every peer was looked up. Set operations on sets made from the dicts
    reuse the hashes they store, so only the peers that are not verified on their own path
    (relayed, via the gateway, unverified: few, in a healthy network) are looked up."""
    relayed_set = set(relayed)
    via_set = set(via) - relayed_set
    unverified = set(paths) - verified - relayed_set - via_set
    out = dict.fromkeys(PATH_KINDS, 0)
    for path in paths.values():
        out[path.kind] = out.get(path.kind, 0) + 1
    for subnet in relayed_set | via_set | unverified:
        if (chosen := paths.get(subnet)) is not None:
            out[chosen.kind] -= 1
    out[RELAYED], out[GATEWAY], out[UNVERIFIED] = len(relayed_set), len(via_set), len(unverified)
    out[NONE] = max(0, len(peers) - sum(out.values()))
    return out


def node_families(state: NodeState) -> list[Metric]:
    """The families read from the daemon's state at scrape time."""
    peers = GaugeMetricFamily("overlayd_peers", "Peers by the kind of their path.", labels=["kind"])
    for kind, count in sorted(state.kinds.items() or dict.fromkeys(PATH_KINDS, 0).items()):
        peers.add_metric([kind], count)
    held = GaugeMetricFamily("overlayd_lease_held", "1 while this node holds its subnet lease.")
    held.add_metric([], 0 if state.lease_ttl is None else 1)
    ttl = GaugeMetricFamily(
        "overlayd_lease_ttl_remaining_seconds",
        "Seconds our etcd lease has left, as of its last grant or renewal (0: none held).",
    )
    ttl.add_metric([], max(0.0, state.lease_ttl or 0.0))
    role = GaugeMetricFamily(
        "overlayd_gateway_role", "1 for this node's role in its site (gateway topology).",
        labels=["role"],
    )  # fmt: skip
    for name in ROLES:
        role.add_metric([name], 1 if state.role == name else 0)
    return [peers, held, ttl, role, *_wireguard(state.wireguard), *_dns(state.dns)]


def _wireguard(wg: WireGuardTotals) -> list[Metric]:
    peers = GaugeMetricFamily(
        "overlayd_wireguard_peers",
        "WireGuard peers by their last handshake: recent (within 180 s), stale or never.",
        labels=["handshake"],
    )
    for name, count in (("never", wg.never), ("recent", wg.recent), ("stale", wg.stale)):
        peers.add_metric([name], count)
    age = GaugeMetricFamily(
        "overlayd_wireguard_handshake_age_max_seconds",
        "The oldest last handshake of a WireGuard peer that had one (0: none).",
    )
    age.add_metric([], wg.oldest_handshake)
    traffic = GaugeMetricFamily(
        "overlayd_wireguard_bytes",
        "Bytes the WireGuard device counts for its current peers, summed.",
        labels=["direction"],
    )
    traffic.add_metric(["rx"], wg.rx_bytes)
    traffic.add_metric(["tx"], wg.tx_bytes)
    return [peers, age, traffic]


def _dns(counters: Mapping[str, int] | None) -> list[Metric]:
    c = counters or {}
    queries = CounterMetricFamily(
        "overlayd_dns_queries", "DNS queries by how they were answered.", labels=["result"]
    )
    counted = 0
    for result in DNS_RESULTS[:-1]:
        counted += c.get(result, 0)
        queries.add_metric([result], c.get(result, 0))
    queries.add_metric(["other"], max(0, c.get("queries", 0) - counted))  # e.g. NOTIMP
    names = GaugeMetricFamily("overlayd_dns_names", "Names the DNS responder serves.")
    names.add_metric([], c.get("names", 0))
    return [queries, names]


def probe_families(counters: ProbeCounters) -> list[Metric]:
    """The prober's totals (overlayd/probe/settings.py), read at scrape time."""
    out: list[Metric] = []
    for name, value, text in (
        ("overlayd_probes_sent", counters.probes_sent, "Probes sent."),
        ("overlayd_probes_received", counters.probes_received, "Peers' probes accepted."),
        ("overlayd_probe_replies_sent", counters.replies_sent, "Replies sent to peers' probes."),
        ("overlayd_probe_replies_received", counters.replies_received, "Replies accepted."),
        ("overlayd_probe_losses", counters.losses, "Probes not answered in time."),
        ("overlayd_probe_send_errors", counters.send_errors, "Probe datagrams not sent."),
    ):
        family = CounterMetricFamily(name, text)
        family.add_metric([], value)
        out.append(family)
    rejects = CounterMetricFamily(
        "overlayd_probe_rejects", "Probe datagrams dropped, by reason.", labels=["reason"]
    )
    for reason in sorted(Reject):
        rejects.add_metric([reason.value], counters.rejected.get(reason, 0))
    return [*out, rejects]


def store_families(counters: StoreCounters) -> list[Metric]:
    """The store adapter's totals, read at scrape time."""
    errors = CounterMetricFamily("overlayd_store_errors", "Store requests that failed.")
    errors.add_metric([], counters.errors)
    reconnects = CounterMetricFamily(
        "overlayd_store_watch_reconnects", "Times the store watch reconnected after an error."
    )
    reconnects.add_metric([], counters.watch_reconnects)
    return [errors, reconnects]
