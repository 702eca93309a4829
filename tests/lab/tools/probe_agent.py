"""``probe_agent CONFIG STATUS``: a prober and the path choice, as the daemon runs them.

For tests/integration/test_prober.py. ``CONFIG`` (JSON): this node's ``key``, ``site``,
``private`` addresses and move-back ``hold``, and its ``peers`` (name -> ``key``, ``site``,
``private``, ``public``). Every 0.1 s (or on a prober wake-up) it replans every peer's path
and rewrites ``STATUS`` (JSON, atomically): chosen paths, per-address stats, the history of
path moves, the prober's counters and the confirmed public addresses.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import uvloop

from overlayd.planning.path_choice import ChooseParams, choose_path, confirmed_public, probe_targets
from overlayd.probe.prober import Prober
from overlayd.probe.settings import PeerTarget, ProbeConfig
from overlayd.values.keys import PrivateKey, PublicKey
from overlayd.values.paths import PeerCandidates, PeerPath
from tests.lab.tools import write_json


def addrs(xs: Iterable[str]) -> tuple[IPv4Address, ...]:
    return tuple(IPv4Address(x) for x in xs)


def status_of(
    prober: Prober[str],
    cfg: dict[str, Any],
    names: Iterable[str],
    current: dict[str, PeerPath],
    history: list[list[object]],
    wakes: int,
    now: float,
) -> dict[str, Any]:
    c = prober.counters
    return {
        "time": time.time(),
        "wakes": wakes,
        "chosen": {n: [str(p.address), p.kind, p.reason] for n, p in current.items()},
        "stats": {
            n: {
                str(a): {
                    "verified": s.verified,
                    "losses": s.losses,
                    "received": s.received,
                    "sent": s.sent,
                    "rtt": s.rtt,
                    "downs": s.downs,
                }
                for a, s in prober.stats(n).items()
            }
            for n in names
        },
        "history": history,
        "counters": {
            "probes_sent": c.probes_sent,
            "replies_received": c.replies_received,
            "probes_received": c.probes_received,
            "replies_sent": c.replies_sent,
            "rejected": dict(c.rejected),
        },
        "public": [
            str(a)
            for a in confirmed_public(
                cfg["site"],
                prober.observations(),
                exclude=set(addrs(cfg["private"])),
                probe_port=prober.port,
                now=now,
            )
        ],
    }


async def run(cfg: dict[str, Any], status_path: Path) -> None:
    changed = asyncio.Event()
    prober: Prober[str] = Prober(
        PrivateKey.from_base64(cfg["key"]),
        ProbeConfig(stable_after=cfg["hold"]),
        lambda _peer: changed.set(),
    )
    await prober.start()
    peers: dict[str, dict[str, Any]] = cfg["peers"]
    cands = {
        n: PeerCandidates(p["site"], addrs(p["private"]), addrs(p["public"]))
        for n, p in peers.items()
    }
    prober.set_peers(
        {
            n: PeerTarget(
                PublicKey.from_base64(p["key"]), probe_targets(cfg["site"], cands[n]), p["site"]
            )
            for n, p in peers.items()
        }
    )
    params = ChooseParams(hold=cfg["hold"])
    current: dict[str, PeerPath] = {}
    history: list[list[object]] = []
    wakes = 0
    while True:
        try:
            await asyncio.wait_for(changed.wait(), 0.1)
            wakes += 1
        except TimeoutError:
            pass
        changed.clear()
        now = time.monotonic()
        for name, pc in cands.items():
            old = current.get(name)
            path = choose_path(cfg["site"], pc, prober.stats(name), old, now, params)
            if path is None or path == old:
                continue
            if old is None or path.address != old.address:
                history.append([time.time(), name, str(path.address), path.kind, path.reason])
            current[name] = path
            prober.set_chosen(name, path.address)
        write_json(status_path, status_of(prober, cfg, cands, current, history, wakes, now))


def main(argv: list[str]) -> int:
    config, status = argv
    uvloop.run(run(json.loads(Path(config).read_text()), Path(status)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
