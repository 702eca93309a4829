#!/usr/bin/env python3
"""Probe cost with many synthetic peers: packets/s and CPU% of the prober at steady state.

Needs root: everything runs in a fresh network namespace ``ovpr-bench-<id>`` (loopback
only, deleted at the end). Two processes, both under uvloop:

* the *prober*: one ``Prober`` with N peers, each with two candidates -- 127.1.x.y
  ("private", chosen, probed every fast interval) and 127.2.x.y ("public", probed every slow
  interval) -- plus the daemon's part: after ``on_change`` it runs ``choose_path`` for
  the peers that changed and ``set_chosen``, as the path keeper would (a replan of every
  peer per change blocked the loop for longer than the probe timeout at 5,000 peers);
* the *responder*: N identities (N keys) on one socket (any 127/8 address is local), which
  answers the prober's probes as the identity each one is addressed to, and also probes the
  prober from every identity at the fast interval -- each real peer probes us too, so the
  prober pays for answering as well.

With ``--active M`` only the first M peers carry traffic: the prober is told from the
start that the others are idle (``Prober.pace``, as the daemon's
path keeper does from its traffic samples), and the responder probes from the idle
identities at the idle interval only. Without it every peer is probed fast (as before the
probe pace existed).

Reported: time until every peer has a verified path, then over the measuring window
packets/s sent and received by the prober and its CPU% (getrusage, and how much of it the
garbage collector took), plus the responder's CPU% for reference; then the daemon's side
of the pace, timed on its own (no root, no sockets): the real traffic sampler and path
keeper folding in one sample of the VXLAN FDB every 5 s, with ``--active`` entries used
since the last one (``run_pace``). ``--profile FILE`` writes the prober's cProfile stats
of the window (the figures then include the profiler's cost).

    sudo .venv/bin/python scripts/bench_probe.py [--peers 1000] [--active 50] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import pstats
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from overlayd.planning.path_choice import choose_path  # noqa: E402
from overlayd.probe.prober import Prober  # noqa: E402
from overlayd.probe.settings import PeerTarget, ProbeConfig  # noqa: E402
from overlayd.probe.wire import Probe, ProbeCodec, ProbeError, peek_recipient  # noqa: E402
from overlayd.values.keys import PrivateKey, PublicKey  # noqa: E402
from overlayd.values.paths import PeerCandidates, PeerPath  # noqa: E402

if TYPE_CHECKING:
    from overlayd.values.lease import LeaseRecord

PROBER_PORT = 8473
RESPONDER_PORT = 8474
SITE = "bench"


def _private(i: int) -> IPv4Address:
    return IPv4Address(f"127.1.{i // 250}.{i % 250 + 1}")


def _public(i: int) -> IPv4Address:
    return IPv4Address(f"127.2.{i // 250}.{i % 250 + 1}")


class GcClock:
    """Time spent in the cyclic garbage collector, per generation (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.runs = [0, 0, 0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds[info["generation"]] += time.perf_counter() - self._started
            self.runs[info["generation"]] += 1


def _rss_mb() -> float:
    """This process's resident set now (``VmRSS``), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return -1.0


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- prober process ------------------------------------------------------------------


async def run_prober(keys: dict[str, Any], warmup_limit: float, seconds: float) -> dict[str, Any]:
    """Probe every peer; ``keys["active"]``: how many carry traffic (the rest go idle)."""
    defaults = ProbeConfig()
    config = ProbeConfig(
        port=PROBER_PORT,
        bind=IPv4Address("127.0.0.1"),
        initial_spread=keys.get("spread", defaults.initial_spread),
        timeout=keys.get("timeout", defaults.timeout),
    )
    changed = asyncio.Event()
    probed: set[int] = set()  # the peers whose paths changed (the daemon's _probed)

    def on_change(peer: int | None) -> None:
        if peer is not None:
            probed.add(peer)
        changed.set()

    prober: Prober[int] = Prober(PrivateKey.from_base64(keys["prober"]), config, on_change)
    peers = {i: PublicKey.from_base64(k) for i, k in enumerate(keys["peers"])}
    cands = {i: PeerCandidates(SITE, (_private(i),), (_public(i),)) for i in peers}
    await prober.start()
    start = time.monotonic()
    active = keys.get("active")
    prober.set_peers(
        {
            i: PeerTarget(key, (_private(i), _public(i)), SITE, RESPONDER_PORT)
            for i, key in peers.items()
        }
    )
    if active is not None:  # steady state: the peers without traffic are idle from the start
        prober.pace(idle=range(active, len(peers)))
    current: dict[int, PeerPath] = {}
    replans = 0

    def replan(which: set[int] | None = None) -> None:
        """Rechoose the paths of ``which`` (None: all), as the path keeper does."""
        nonlocal replans
        replans += 1
        now = time.monotonic()
        for i in cands if which is None else which:
            pc = cands[i]
            path = choose_path(SITE, pc, prober.stats(i), current.get(i), now)
            if path is not None and current.get(i) != path:
                current[i] = path
                prober.set_chosen(i, path.address)

    async def daemon() -> None:
        while True:
            await changed.wait()
            changed.clear()
            which = set(probed)
            probed.clear()
            replan(which)
            await asyncio.sleep(0.05)  # the reconcile loop coalesces bursts of changes

    def all_verified() -> bool:
        return all(
            (s := prober.stats(i).get(current[i].address)) is not None and s.verified for i in peers
        )

    replan()
    loop_task = asyncio.create_task(daemon())
    while not all_verified():
        if time.monotonic() - start > warmup_limit:
            break
        await asyncio.sleep(0.05)
    verified_after = time.monotonic() - start
    if active is not None:  # the first probes of the idle peers' other paths go out first
        await asyncio.sleep(config.slow_interval * (1 + config.jitter))
    await asyncio.sleep(3.0)  # let start-up spread and first slow probes settle
    c = prober.counters
    probes0, replies0 = c.probes_sent, c.replies_sent
    recv0 = c.probes_received + c.replies_received
    losses0, replans0 = c.losses, replans
    profile = cProfile.Profile() if keys.get("profile") else None
    collector = GcClock()
    gc.callbacks.append(collector)
    cpu0, t0 = _cpu(), time.monotonic()
    if profile is not None:
        profile.enable()
    await asyncio.sleep(seconds)
    if profile is not None:
        profile.disable()
        profile.dump_stats(keys["profile"])
    cpu1, t1 = _cpu(), time.monotonic()
    gc.callbacks.remove(collector)
    wall = t1 - t0
    result = {
        "peers": len(peers),
        "active": len(peers) if active is None else active,
        "all_verified_after_s": round(verified_after, 2),
        "verified_chosen": sum(
            1 for i in peers if (s := prober.stats(i).get(current[i].address)) and s.verified
        ),
        "private_chosen": sum(1 for p in current.values() if p.kind == "private"),
        "probes_sent_pps": round((c.probes_sent - probes0) / wall),
        "replies_sent_pps": round((c.replies_sent - replies0) / wall),
        "received_pps": round((c.probes_received + c.replies_received - recv0) / wall),
        "cpu_percent": round(100 * (cpu1 - cpu0) / wall, 1),
        "gc_percent": [round(100 * s / wall, 2) for s in collector.seconds],
        "gc_runs": collector.runs,
        "losses": c.losses - losses0,
        "replans": replans - replans0,
        "rejected": dict(c.rejected),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_mb": _rss_mb(),
    }
    loop_task.cancel()
    await prober.close()
    return result


# -- the daemon's pace: traffic samples -----------------------------------------------


def _record(i: int, key: str) -> LeaseRecord:
    from overlayd.values.kernel_state import MacAddress
    from overlayd.values.lease import LeaseRecord

    return LeaseRecord(
        subnet=IPv4Network(f"10.{128 + i // 256}.{i % 256}.0/24"),
        node=f"peer{i}",
        node_id=f"id{i}",
        public_ip=_public(i),
        vtep_mac=MacAddress.from_bytes(bytes([2, 0, 0, 0, i // 256, i % 256])),
        vni=1,
        site=SITE,
        private_ips=(_private(i),),
        public_key=key,
        probe_port=RESPONDER_PORT,
    )


async def run_pace(keys: dict[str, Any], samples: int) -> dict[str, Any]:
    """CPU of the daemon's side of the probe pace: the traffic sampler mapping one sample
    of the VXLAN FDB (``active`` entries used since the last, the others long idle) and
    the path keeper folding it in (``note_traffic``), as every 5 s in the daemon. The FDB
    comes from the fake data plane, whose own cost is taken off (as is the netlink dump's:
    it runs on a thread of the daemon, overlayd/dataplane, and is not the pace's)."""
    # imported here: the prober's process loads what a daemon's prober does, no more
    from overlayd.agent.path_keeper import PathKeeper
    from overlayd.agent.traffic import SAMPLE_INTERVAL, TrafficSampler
    from overlayd.disk.node_key import NodeKey
    from overlayd.planning.probe_pace import PaceParams
    from overlayd.values.config import BackendConfig
    from overlayd.values.kernel_state import FdbEntry, KernelState
    from tests.component.fake_dataplane import VXLAN_INDEX, FakeDataPlane

    active = keys.get("active", len(keys["peers"]))
    with tempfile.TemporaryDirectory() as tmp:
        node_key = NodeKey.load_or_create(Path(tmp))
    # no change hold: every peer without traffic is idle at once, as in the steady state
    keeper = PathKeeper(node_key, ProbeConfig(port=0), pace=PaceParams(change_hold=0.0))
    me = _record(len(keys["peers"]), node_key.public.base64)
    records = {r.subnet: r for r in (_record(i, k) for i, k in enumerate(keys["peers"]))}
    for subnet, record in records.items():
        keeper.lease_changed(me, subnet, record)
    keeper.recompute(me, records, records)
    dp = FakeDataPlane()
    dp.preload(
        VXLAN_INDEX,
        KernelState.of([], [], [FdbEntry(r.vtep_mac, r.public_ip) for r in records.values()]),
    )
    long_ago = time.monotonic() - 1000.0
    macs = [r.vtep_mac for r in records.values()]
    dp.fdb_used.update(dict.fromkeys(macs, long_ago))
    sampler = TrafficSampler(
        BackendConfig("vxlan"), lambda: VXLAN_INDEX, dp, keeper, lambda: records
    )
    spent, sizes = [], []
    for _ in range(samples + 1):  # the first reads every entry: not the steady state
        await asyncio.sleep(1.1)  # the active entries' use moves on (by a second at least)
        dp.fdb_used.update(dict.fromkeys(macs[:active], time.monotonic()))
        cpu0 = _cpu()
        await dp.fdb_idle(VXLAN_INDEX)  # what the fake's dump costs, taken off below
        cpu1 = _cpu()
        sample = await sampler.sample()
        keeper.note_traffic(sample)
        spent.append(max(0.0, _cpu() - cpu1 - (cpu1 - cpu0)))
        sizes.append(len(sample))
    idle = sum(1 for r in keeper.report(records, {}) if r.idle)
    per_sample = sum(spent[1:]) / samples
    return {
        "pace_ms_per_sample": round(1e3 * per_sample, 2),
        "pace_first_sample_ms": round(1e3 * spent[0], 1),
        "pace_cpu_percent": round(100 * per_sample / SAMPLE_INTERVAL, 3),
        "pace_interval_s": SAMPLE_INTERVAL,
        "pace_peers_per_sample": sizes[-1],
        "pace_idle": idle,
    }


# -- responder process ---------------------------------------------------------------


class Responder(asyncio.DatagramProtocol):
    """Many identities on one socket; answers probes as the identity addressed."""

    def __init__(self, identities: list[PrivateKey], prober_key: PublicKey) -> None:
        self.prober_key = prober_key
        self.codecs = {k.public_key(): ProbeCodec(k) for k in identities}
        self.outstanding: dict[bytes, PublicKey] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.answered = self.rejected = 0
        self.reasons: Counter[str] = Counter()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def _expects(self, key: PublicKey, nonce: bytes) -> bool:
        return self.outstanding.pop(nonce, None) == key

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        recipient = peek_recipient(data)
        codec = self.codecs.get(recipient) if recipient is not None else None
        if codec is None or self.transport is None:
            self.rejected += 1
            return
        known: Callable[[PublicKey], bool] = self.prober_key.__eq__
        try:
            msg = codec.decode(data, known=known, expects_reply=self._expects)
        except ProbeError as exc:
            self.rejected += 1
            self.reasons[exc.reason] += 1
            return
        if isinstance(msg, Probe):
            observed = (IPv4Address(addr[0]), addr[1])
            self.transport.sendto(codec.encode_reply(msg, observed), addr)
            self.answered += 1

    async def probe_forever(self, interval: float, codecs: list[ProbeCodec]) -> None:
        """Each of ``codecs`` probes the prober once per ``interval``, evenly spread."""
        if not codecs:
            return
        step = interval / len(codecs)
        target = ("127.0.0.1", PROBER_PORT)
        next_at = time.monotonic()
        while True:
            for codec in codecs:
                nonce, data = codec.encode_probe(self.prober_key)
                self.outstanding[nonce] = self.prober_key  # the reply comes from it
                if self.transport is not None:
                    self.transport.sendto(data, target)
                next_at += step
                delay = next_at - time.monotonic()
                if delay > 0.002:
                    await asyncio.sleep(delay)
            if len(self.outstanding) > 4 * len(self.codecs):  # lost replies: keep it bounded
                self.outstanding.clear()


async def run_responder(keys: dict[str, Any]) -> dict[str, Any]:
    """Serve until SIGTERM, then report CPU% over the whole run."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    identities = [PrivateKey.from_base64(k) for k in keys["peer_private"]]
    proto = Responder(identities, PrivateKey.from_base64(keys["prober"]).public_key())
    await loop.create_datagram_endpoint(lambda: proto, local_addr=("0.0.0.0", RESPONDER_PORT))
    codecs, config = list(proto.codecs.values()), ProbeConfig()
    active = keys.get("active", len(codecs))
    tasks = [
        asyncio.create_task(proto.probe_forever(config.fast_interval, codecs[:active])),
        asyncio.create_task(proto.probe_forever(config.idle_interval, codecs[active:])),
    ]
    cpu0, t0 = _cpu(), time.monotonic()
    await stop.wait()
    for task in tasks:
        task.cancel()
    return {
        "cpu_percent": round(100 * (_cpu() - cpu0) / (time.monotonic() - t0), 1),
        "answered": proto.answered,
        "rejected": proto.rejected,
        "reasons": dict(proto.reasons),
    }


# -- orchestration -------------------------------------------------------------------


def _ns(name: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", name, *cmd]


def _print_pace(pace: dict[str, Any]) -> None:
    print(
        f"pace, daemon side              {pace['pace_ms_per_sample']} ms of CPU per traffic "
        f"sample of {pace['pace_peers_per_sample']} entries (every {pace['pace_interval_s']:g} s: "
        f"{pace['pace_cpu_percent']} % of one core; the first sample: "
        f"{pace['pace_first_sample_ms']} ms); {pace['pace_idle']} peers idle"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring window")
    parser.add_argument("--active", type=int, help="peers carrying traffic (default: all)")
    parser.add_argument(
        "--spread", type=float, default=1.0, help="seconds over which first probes go out"
    )
    parser.add_argument(
        "--timeout", type=float, default=0.6, help="probe timeout (a loaded machine: longer)"
    )
    parser.add_argument(
        "--pace-samples", type=int, default=10, help="traffic samples the pace is timed over"
    )
    parser.add_argument(
        "--pace-only", action="store_true", help="time the daemon's pace only (no root)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="write the prober's cProfile stats of the window here (costs CPU: no figures)",
    )
    parser.add_argument("--role", choices=["prober", "responder"], help=argparse.SUPPRESS)
    parser.add_argument("--keys", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import uvloop

    if args.role is not None:
        keys = json.loads(args.keys.read_text())
        if args.role == "prober":
            out = uvloop.run(run_prober(keys, warmup_limit=120.0, seconds=args.seconds))
        else:
            out = uvloop.run(run_responder(keys))
        print(json.dumps(out))
        return

    peers = [PrivateKey.generate() for _ in range(args.peers)]
    pace_keys = {"peers": [k.public_key().base64 for k in peers], "active": args.active}
    if args.pace_only:
        _print_pace(uvloop.run(run_pace(pace_keys, args.pace_samples)))
        return
    if os.geteuid() != 0:
        sys.exit("needs root (runs in a network namespace)")
    ns = f"ovpr-bench-{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory() as tmp:
        keyfile = Path(tmp) / "keys.json"
        keyfile.touch(mode=0o600)  # throwaway keys, still not world-readable
        keyfile.write_text(
            json.dumps(
                {
                    "prober": PrivateKey.generate().reveal_base64(),
                    "peers": [k.public_key().base64 for k in peers],
                    "peer_private": [k.reveal_base64() for k in peers],
                    **({} if args.active is None else {"active": args.active}),
                    "spread": args.spread,
                    "timeout": args.timeout,
                    **({} if args.profile is None else {"profile": str(args.profile.resolve())}),
                }
            )
        )
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
            me = [sys.executable, str(Path(__file__).resolve()), "--keys", str(keyfile)]
            responder = subprocess.Popen(
                _ns(ns, *me, "--role", "responder"),
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(1.0)
            prober = subprocess.run(
                _ns(ns, *me, "--role", "prober", "--seconds", str(args.seconds)),
                stdout=subprocess.PIPE,
                text=True,
                check=True,
            )
            responder.terminate()
            try:
                responder_out, _ = responder.communicate(timeout=60)
            except subprocess.TimeoutExpired:  # swamped: no figure of its own
                responder.kill()
                responder.communicate()
                responder_out = json.dumps({"cpu_percent": -1})
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=False)
    result = json.loads(prober.stdout)
    other = json.loads(responder_out)
    pace = uvloop.run(run_pace(pace_keys, args.pace_samples))
    pps = result["probes_sent_pps"] + result["replies_sent_pps"] + result["received_pps"]
    print(
        f"peers                          {result['peers']} (2 candidates each), "
        f"{result['active']} with traffic"
    )
    print(f"all chosen paths verified      {result['all_verified_after_s']} s after start")
    print(
        f"verified chosen / private      {result['verified_chosen']} / {result['private_chosen']}"
    )
    print(
        f"prober sent                    {result['probes_sent_pps']} probes/s + "
        f"{result['replies_sent_pps']} replies/s"
    )
    print(f"prober received                {result['received_pps']} packets/s")
    print(
        f"prober CPU                     {result['cpu_percent']} % of one core "
        f"({1e4 * result['cpu_percent'] / max(pps, 1):.1f} us per packet in or out)"
    )
    print(
        f"of which garbage collection   {result['gc_percent']} % (generations 0, 1, 2; "
        f"{result['gc_runs']} runs)"
    )
    print(
        f"prober RSS                     {result['rss_mb']} MB at the end "
        f"({result['max_rss_mb']} MB at its peak)"
    )
    print(f"losses in window               {result['losses']}")
    print(f"replans in window              {result['replans']}")
    print(f"rejected (whole run)           {result['rejected']}")
    _print_pace(pace)
    total = result["cpu_percent"] + pace["pace_cpu_percent"]
    print(f"prober + pace CPU              {total:.1f} % of one core")
    print(f"responder CPU (reference)      {other['cpu_percent']} % of one core")
    print(f"responder rejected             {other.get('reasons', '-')}")
    if args.profile is not None:
        pstats.Stats(str(args.profile)).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
