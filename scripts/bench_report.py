#!/usr/bin/env python3
"""Benchmark of the status reports' write load on etcd (issue 14; docs/etcd-schema.md,
"Status reports"), by simulation.

``--nodes`` daemons (default 5,000) in ``--sites`` sites each run the daemon's own
``StatusReporter`` (overlayd/agent/reporting.py: the planner's ``due``, its etcd lease
kept alive) on a manual clock, every node ticking every ``min_interval`` seconds,
staggered. A node's peers are simulated per site (``--reps`` representative peers whose
counts are scaled to the real ones, so a report has the size it would have): in-site
peers on verified private paths, others on public ones; each site's median RTT wobbles
by ``--wobble`` (a fraction, gaussian) every tick. The store counts what would reach
etcd: puts and their bytes (key and value), keepalives, lease grants.

Phases: start (every node writes its first report), steady state (nothing changes but
the RTT wobble: only the refresh writes), churn (one node dies every ``--churn-every``
seconds and comes back ``--down-for`` seconds later, with a new report lease: every
other node's report changes twice per event). ``--etcd``: then write one report per node
to a real etcd (tests/lab, on 127.0.0.1) and read its database size and the puts' time.
``--ctl``: the time of ``overlayctl status`` and ``overlayctl graph`` (DOT text by node,
by site; SVG by site) over those reports and their leases (an in-memory store: the
commands' own cost, not etcd's).

``.venv/bin/python scripts/bench_report.py [--nodes 5000] [--etcd] [--ctl]``
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from click.testing import CliRunner

from overlayd.agent.host import Clock
from overlayd.agent.reporting import StatusReporter
from overlayd.agent.status_docs import Status
from overlayd.cli.context import CtlContext
from overlayd.cli.ctl import main as ctl_main
from overlayd.planning.report import ReportParams
from overlayd.store.api import DEFAULT_PREFIX, StoreKeys
from overlayd.store.etcd import EtcdSettings, EtcdStore
from overlayd.store.memory import MemStore
from overlayd.store.memory_kv import ManualClock
from overlayd.values.config import parse_config
from overlayd.values.kernel_state import MacAddress
from overlayd.values.lease import LeaseRecord
from overlayd.values.paths import PRIVATE, PUBLIC, PeerPath
from overlayd.values.report import BROKEN_KINDS, NodeReport
from tests.lab.etcd import EtcdServer

WALL = 1_700_000_000.0
ADDR = IPv4Address("192.0.2.1")


@dataclass
class Counts:
    """What reached the (simulated) etcd."""

    puts: int = 0
    put_bytes: int = 0
    keepalives: int = 0
    grants: int = 0

    def minus(self, other: Counts) -> Counts:
        return Counts(
            self.puts - other.puts, self.put_bytes - other.put_bytes,
            self.keepalives - other.keepalives, self.grants - other.grants,
        )  # fmt: skip


@dataclass
class CountingStore:
    """The reporter's store: counts every request, keeps the last report per node."""

    keys: StoreKeys = field(default_factory=lambda: StoreKeys(DEFAULT_PREFIX))
    counts: Counts = field(default_factory=Counts)
    last: dict[str, NodeReport] = field(default_factory=dict)
    _next: int = 1

    async def grant(self, ttl: int) -> int:
        self.counts.grants += 1
        self._next += 1
        return self._next

    async def keepalive(self, lease_id: int) -> int:
        self.counts.keepalives += 1
        return 20

    async def ttl_left(self, lease_id: int) -> int:
        return 20

    async def revoke(self, lease_id: int) -> None:
        pass

    async def put_status_report(self, report: NodeReport, lease_id: int) -> None:
        self.counts.puts += 1
        self.counts.put_bytes += len(self.keys.status(report.node)) + len(report.to_json())
        self.last[report.node] = report


@dataclass(frozen=True)
class Peer:
    """A simulated peer (the fields a report reads)."""

    node: str
    site: str
    path: PeerPath | None
    rtt_ms: float | None
    verified: tuple[IPv4Address, ...] = (ADDR,)
    via: str | None = None
    relay: str | None = None


class World:
    """The simulated network: who is down, each site's RTT from each site."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(7)
        self.sites = [f"site-{s:02d}" for s in range(args.sites)]
        self.base = {
            (a, b): 0.4 if a == b else self.rng.uniform(8.0, 120.0)
            for a in self.sites
            for b in self.sites
        }
        self.names = [f"node-{i:05d}" for i in range(args.nodes)]
        self.site_of = {n: self.sites[i % args.sites] for i, n in enumerate(self.names)}
        self.down: dict[str, float] = {}  # node → when it died

    def peers(self, me: str) -> list[Peer]:
        """``me``'s peers now: representatives per site with a wobbling RTT, and every
        node that is down (no path) by name."""
        mine, out = self.site_of[me], []
        for site in self.sites:
            rtt = self.base[mine, site] * (1 + self.rng.gauss(0, self.args.wobble))
            path = PeerPath(ADDR, PRIVATE if site == mine else PUBLIC, "verified")
            out += [Peer(f"rep-{site}-{k}", site, path, rtt) for k in range(self.args.reps)]
        out += [Peer(n, self.site_of[n], None, None, ()) for n in self.down if n != me]
        return out


class ScaledReporter(StatusReporter):
    """The daemon's reporter, its representatives' counts scaled to the real ones."""

    factor = 1.0

    def report(self) -> NodeReport | None:
        found = super().report()
        if found is None:
            return None

        def scale(kinds: tuple[tuple[str, int], ...]) -> tuple[tuple[str, int], ...]:
            return tuple((k, n if k in BROKEN_KINDS else round(n * self.factor)) for k, n in kinds)

        return replace(
            found,
            paths=scale(found.paths),
            site_paths=tuple((s, scale(kinds)) for s, kinds in found.site_paths),
        )


def lease_of(i: int, name: str, site: str) -> LeaseRecord:
    subnet = IPv4Network((0x0A000000 + (i + 1) * 256, 24))
    return LeaseRecord(
        subnet=subnet, node=name, node_id=f"{i:032x}", public_ip=ADDR, site=site,
        vtep_mac=MacAddress.from_bytes(bytes([2, 0, 0, i >> 16 & 255, i >> 8 & 255, i & 255])),
        vni=1,
    )  # fmt: skip


def reporter(world: World, i: int, store: CountingStore, clock: ManualClock) -> ScaledReporter:
    name = world.names[i]
    record = lease_of(i, name, world.site_of[name])
    status = Status(reconciles=1, last_reconcile=WALL)
    made = ScaledReporter(
        store, lambda: record, lambda: world.peers(name), status,
        Clock(monotonic=clock, wall=lambda: WALL + clock.now), world.args.params,
    )  # fmt: skip
    made.factor = (world.args.nodes - 1) / (world.args.sites * world.args.reps)
    return made


async def simulate(args: argparse.Namespace) -> tuple[World, CountingStore]:
    world, store, clock = World(args), CountingStore(), ManualClock(0.0)
    params: ReportParams = args.params
    step = int(params.min_interval)
    reporters = {n: reporter(world, i, store, clock) for i, n in enumerate(world.names)}
    phases = [("start", step), ("steady state", args.steady), ("churn", args.churn)]
    second = 0
    for phase, seconds in phases:
        before, t0 = Counts(**vars(store.counts)), time.process_time()
        for _ in range(seconds):
            clock.now = float(second)
            if phase == "churn":
                churn(world, reporters, store, clock, second)
            for i, name in enumerate(world.names):
                if i % step == second % step and name not in world.down:
                    await reporters[name].tick()
            second += 1
        print_phase(phase, seconds, store.counts.minus(before), args.nodes)
        print(f"  (simulated in {time.process_time() - t0:.1f} s of CPU)")
    return world, store


def churn(
    world: World,
    reporters: dict[str, ScaledReporter],
    store: CountingStore,
    clock: ManualClock,
    second: int,
) -> None:
    """Every ``churn_every`` seconds one node dies; ``down_for`` seconds later it is back
    (a restarted daemon: a new reporter, a new lease)."""
    for name, since in list(world.down.items()):
        if second - since >= world.args.down_for:
            del world.down[name]
            reporters[name] = reporter(world, world.names.index(name), store, clock)
    if second % world.args.churn_every == 0:
        victim = world.rng.choice([n for n in world.names if n not in world.down])
        world.down[victim] = second


def print_phase(phase: str, seconds: int, c: Counts, nodes: int) -> None:
    per = max(seconds, 1)
    size = c.put_bytes / c.puts if c.puts else 0
    print(
        f"{phase}, {seconds} s, {nodes} nodes: {c.puts / per:,.1f} writes/s, "
        f"{c.put_bytes / per / 1024:,.1f} KiB/s (reports of {size:,.0f} B), "
        f"{c.keepalives / per:,.1f} keepalives/s, {c.grants} lease grants"
    )


async def to_etcd(reports: list[NodeReport]) -> None:
    """Write ``reports`` to a real etcd on 127.0.0.1 (one client, 64 at a time): the time
    and the size of etcd's database file (bbolt: it grows in steps)."""
    with tempfile.TemporaryDirectory() as tmp, EtcdServer(Path(tmp) / "etcd") as server:
        store = EtcdStore(EtcdSettings(endpoints=(server.endpoint,)))
        await store.connect()
        try:
            lease = await store.grant(60)
            t0 = time.monotonic()
            for start in range(0, len(reports), 64):
                batch = reports[start : start + 64]
                await asyncio.gather(*(store.put_status_report(r, lease) for r in batch))
            took = time.monotonic() - t0
            table = await store.list_status_reports()
        finally:
            await store.close()
        db = sum(p.stat().st_size for p in (Path(tmp) / "etcd").rglob("db") if p.is_file())
    print(
        f"real etcd: {len(reports):,} reports written in {took:.2f} s "
        f"({len(reports) / took:,.0f} writes/s from one client), {len(table.reports):,} "
        f"listed back; its database file {db / 2**20:.1f} MiB"
    )


def time_ctl(world: World, reports: dict[str, NodeReport]) -> None:
    """``overlayctl status`` and ``graph`` over the last ``reports`` (of the nodes up at
    the end) and every node's lease."""
    mem = MemStore()

    async def fill() -> None:
        await mem.put_config(parse_config('{"Network": "10.0.0.0/8", "SubnetLen": 24}'))
        lease = await mem.grant(3600)
        for i, name in enumerate(world.names):
            await mem.create_lease(lease_of(i, name, world.site_of[name]), lease)
            if name not in world.down and name in reports:
                await mem.put_status_report(reports[name], lease)

    asyncio.run(fill())
    obj = CtlContext(store_factory=lambda _settings: mem, clock=lambda: WALL + 600)
    graphs = (["graph", "--level", "nodes"], ["graph"], ["graph", "-o", "svg"])
    for args in (["status"], ["status", "-o", "json"], *graphs):
        t0 = time.monotonic()
        result = CliRunner().invoke(ctl_main, args, obj=obj)
        took = time.monotonic() - t0
        assert result.exit_code == 0, result.output[-500:]
        print(
            f"overlayctl {' '.join(args)}: {took:.2f} s for {len(world.names):,} nodes "
            f"({len(result.stdout) / 2**20:.1f} MiB of output)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--reps", type=int, default=5, help="representative peers per site")
    parser.add_argument("--wobble", type=float, default=0.03, help="RTT noise (fraction)")
    parser.add_argument("--steady", type=int, default=240, help="seconds of steady state")
    parser.add_argument("--churn", type=int, default=240, help="seconds of churn")
    parser.add_argument("--churn-every", type=int, default=10)
    parser.add_argument("--down-for", type=int, default=60)
    parser.add_argument("--etcd", action="store_true", help="also write to a real etcd")
    parser.add_argument("--ctl", action="store_true", help="time overlayctl status and graph")
    args = parser.parse_args()
    args.params = ReportParams()
    p = args.params
    print(
        f"reporters: a write at most every {p.min_interval:g} s, refreshed every "
        f"{p.refresh:g} s, lease TTL {p.ttl} s; {args.sites} sites, RTT wobble "
        f"{args.wobble:.0%}, churn: a node down every {args.churn_every} s for {args.down_for} s"
    )
    world, store = asyncio.run(simulate(args))
    if args.etcd:
        asyncio.run(to_etcd(sorted(store.last.values(), key=lambda r: r.node)))
    if args.ctl:
        time_ctl(world, store.last)


if __name__ == "__main__":
    main()
