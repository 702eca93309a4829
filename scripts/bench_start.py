"""Fast start and quick join (issue 12): how soon a fresh overlay carries traffic.

In the six-host multi-cloud world (tests/lab/world.py), per backend and per run (a fresh
world each, as scripts/bench_join.py does):

1. start -> full matrix: all six daemons are started at once; from each host a ``ping``
   every 50 ms to every other host's overlay address starts as soon as that host's lease
   is known; the figure is the time from the first daemon's start to the last pair's first
   echo reply (every pair has answered once).
2. join: then the host ``--newcomer`` dies and its lease is revoked; once every other
   daemon has dropped it, it joins afresh (new state dir: a new node, key and lease); the
   figure is the time from its start until it has had a reply from every other host and
   every other host one from it.
3. idle: the highest CPU (over ``--idle`` seconds, ``--settle`` seconds after the matrix
   is full: start-up's own work is not idle) and RSS of the six daemons
   (wireguard-go runs in its own process and is not counted).

Daemons run with ``--debug``, so each one's start-up phases (overlayd/runtime/phases.py)
are in its log; the medians of the newcomer's phases are printed when it logs them.
The package is byte-compiled first, as an installed one is. Prints one JSON line per run,
then per backend median and max.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import partial
from ipaddress import IPv4Address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.daemons import BIN, OverlaydProc, init_network, ns_run, wait_until
from tests.lab.world import World, build_multicloud_world, destroy
from tests.topology import kill_host

REPO = Path(__file__).resolve().parent.parent
BACKENDS = ("vxlan", "wireguard", "vxlan+wireguard")
REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from")
PHASE = re.compile(r"start-up phase (.+) at ([\d.]+) s")


@dataclass
class Pinger:
    """``ping`` every 50 ms from ``src`` to ``dst``; ``first_reply()`` is the wall time of
    its first echo reply (None: none yet)."""

    src: OverlaydProc
    dst: IPv4Address
    proc: subprocess.Popen[str] = field(init=False)
    _first: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        argv = ["ping", "-n", "-D", "-i", "0.05", "-W", "1", str(self.dst)]
        self.proc = subprocess.Popen(
            self.src.host.ns.argv(argv), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        os.set_blocking(self.proc.stdout.fileno(), False)  # type: ignore[union-attr]

    def first_reply(self) -> float | None:
        if self._first is None:
            for line in self.proc.stdout or ():
                if m := REPLY.match(line):
                    self._first = float(m.group(1))
                    break
        return self._first

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def overlay_ip(d: OverlaydProc) -> IPv4Address | None:
    """The daemon's overlay address once its subnet file is written (None: not yet)."""
    try:
        return d.overlay_ip()
    except (FileNotFoundError, KeyError, ValueError):
        return None


def time_pairs(
    t0: float, sources: Iterable[OverlaydProc], dests: Iterable[OverlaydProc], timeout: float
) -> float:
    """Seconds from ``t0`` (wall) until each source has had an echo reply from each
    destination (not itself); a pinger starts once its destination's address is known."""
    pairs = [(s, d) for s in sources for d in dests if s is not d]
    pingers: dict[tuple[str, str], Pinger] = {}
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for s, d in pairs:
                if (s.node, d.node) not in pingers and (ip := overlay_ip(d)) is not None:
                    pingers[s.node, d.node] = Pinger(s, ip)
            replies = [p.first_reply() for p in pingers.values()]
            if len(pingers) == len(pairs) and all(r is not None for r in replies):
                return max(r for r in replies if r is not None) - t0
            time.sleep(0.02)
        missing = sorted(k for k, p in pingers.items() if p.first_reply() is None)
        raise AssertionError(f"no reply within {timeout}s for {missing}")
    finally:
        for p in pingers.values():
            p.stop()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    found = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(found.group(1)) / 1024 if found else -1.0


def idle(daemons: list[OverlaydProc], settle: float, seconds: float) -> tuple[float, float]:
    """The daemons' highest idle CPU (% of a core over ``seconds``, after ``settle``) and
    highest RSS (MB)."""
    time.sleep(settle)
    pids = [d.proc.pid for d in daemons if d.proc is not None]
    c0, w0 = {p: cpu_seconds(p) for p in pids}, time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - w0
    cpu = max(100 * (cpu_seconds(p) - c0[p]) / wall for p in pids)
    return cpu, max(rss_mb(p) for p in pids)


def phases(d: OverlaydProc) -> dict[str, float]:
    """The start-up phases the daemon logged (``--debug``), seconds since its start."""
    try:
        text = d.log_file.read_text()
    except FileNotFoundError:
        return {}
    return {m.group(1): float(m.group(2)) for m in PHASE.finditer(text)}


def start_all(
    world: World, hosts: Iterable[str], flags: tuple[str, ...], tag: str = ""
) -> dict[str, OverlaydProc]:
    return {h: OverlaydProc(world, world.host(h), flags, tag=tag).start() for h in hosts}


@dataclass(frozen=True)
class Run:
    """One run's figures; ``phases``: the newcomer's start-up phases."""

    matrix_s: float
    join_s: float
    idle_cpu_pct: float
    rss_mb: float
    phases: dict[str, float]


def _forgot(d: OverlaydProc, node: str) -> bool:
    return node not in d.peers()


def one_run(
    backend: str, newcomer: str, index: int, idle_s: tuple[float, float], flags: tuple[str, ...]
) -> Run:
    """One fresh world: the start of all six, idle, then the newcomer's fresh join."""
    world = build_multicloud_world(f"ovbs{index}-")
    daemons: dict[str, OverlaydProc] = {}
    try:
        init_network(world, backend)
        t0 = time.time()
        daemons = start_all(world, [h.name for h in world.hosts], flags)
        matrix = time_pairs(t0, daemons.values(), daemons.values(), 60)
        cpu, rss = idle(list(daemons.values()), *idle_s)
        # the newcomer leaves for good (host killed, lease revoked) and a new one joins
        kill_host(daemons, newcomer)
        ctl = [str(BIN / "overlayctl"), "--etcd-endpoints", world.etcd_endpoint]
        ns_run(world.hosts[0].ns.name, *ctl, "leases", "revoke", newcomer)
        others = [d for n, d in daemons.items() if n != newcomer]
        for d in others:
            wait_until(partial(_forgot, d, newcomer), 30, f"{d.node} forgot {newcomer}")
        t1 = time.time()
        new = daemons[f"{newcomer}-join"] = start_all(world, [newcomer], flags, "-join")[newcomer]
        join = max(time_pairs(t1, [new], others, 60), time_pairs(t1, others, [new], 60))
        with contextlib.suppress(AssertionError):  # a daemon before issue 12 logs none
            wait_until(lambda: "last peer programmed" in phases(new), 5, "the newcomer's phases")
        return Run(matrix, join, cpu, rss, phases(new))
    finally:
        for d in daemons.values():
            d.kill9()
        destroy(world, remove_workdir=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--backend", action="append", choices=BACKENDS)
    parser.add_argument("--newcomer", default="a3", help="the host that joins last")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle measured")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds before idle")
    parser.add_argument(
        "--no-debug", action="store_true", help="daemons without --debug (no phases logged)"
    )
    args = parser.parse_args()
    # as installed: byte-compiled (this environment may set PYTHONDONTWRITEBYTECODE)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "overlayd")], check=True)
    for backend in args.backend or BACKENDS:
        rows = []
        for i in range(args.runs):
            flags = () if args.no_debug else ("--debug",)
            row = one_run(backend, args.newcomer, i, (args.settle, args.idle), flags)
            rows.append(row)
            print(json.dumps({"backend": backend, **asdict(row)}), flush=True)
        for key in ("matrix_s", "join_s", "idle_cpu_pct", "rss_mb"):
            values = [float(getattr(r, key)) for r in rows]
            print(f"{backend} {key:>12}: median {statistics.median(values):.2f}, "
                  f"max {max(values):.2f}")  # fmt: skip
        names = {n for r in rows for n in r.phases}
        medians = {n: statistics.median(r.phases[n] for r in rows if n in r.phases) for n in names}
        for name, at in sorted(medians.items(), key=lambda item: item[1]):
            print(f"{backend} newcomer phase {name:>22}: median {at:.3f} s after exec")
    return 0


if __name__ == "__main__":
    sys.exit(main())
