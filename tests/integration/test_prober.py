"""The prober with real sockets in network namespaces (needs root).

World (namespaces ``ovpr-<id>-*``, deleted at the end even on failure)::

    br0 (ns br): a0 10.77.0.1 + 192.0.2.1   b0 10.77.0.2 + 192.0.2.2   c0 10.77.0.3 + 192.0.2.3
    br1 (ns br): a1 10.77.1.1               d1 10.77.1.2

A and B share site s1, C is in s2, D in s3. 10.77.0.x plays the private range and
192.0.2.x the public one. B's lease (as A sees it) also lists 10.77.1.2 as a private
address -- but from A that address is D, a real peer with a valid key of its own, on
another LAN (overlapping private ranges). D runs a hostile responder that answers every
probe it sees, for whoever it was meant, as itself and as B.

Every honest node runs an agent (tests/lab/tools/probe_agent.py, in its namespace, under
uvloop) that plays the daemon: a ``Prober`` plus ``choose_path`` on every change, writing
its view to a JSON file; D runs tests/lab/tools/probe_hostile.py.
The test process stays in the root namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from overlayd.values.keys import PrivateKey
from tests.daemons import wait_until
from tests.lab.netns import tool

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

HOLD = 4.0  # move-back hold, shortened from the default 10 s to keep the test quick


def run(*args: str, check: bool = True, input: str | None = None) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed: {proc.stderr}")
    return proc.stdout


@dataclass
class Node:
    name: str
    ns: str
    site: str
    private: list[str]
    public: list[str]
    key: PrivateKey
    status_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.status_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data

    def verified(self, peer: str, address: str) -> bool:
        s = self.status().get("stats", {}).get(peer, {}).get(address)
        return bool(s and s["verified"])

    def chosen(self, peer: str) -> str | None:
        c = self.status().get("chosen", {}).get(peer)
        return str(c[0]) if c else None

    def rejected(self, reason: str) -> int:
        return int(self.status().get("counters", {}).get("rejected", {}).get(reason, 0))


@dataclass
class World:
    prefix: str
    dir: Path
    nodes: dict[str, Node]
    hostile_status: Path

    def ns(self, suffix: str) -> str:
        return f"{self.prefix}-{suffix}"

    def nft(self, node: str, script: str) -> None:
        run("ip", "netns", "exec", self.nodes[node].ns, "nft", "-f", "-", input=script)


def _link(prefix: str, node: str, ifname: str, bridge: str, addrs: list[str]) -> None:
    ns, br = f"{prefix}-{node}", f"{prefix}-br"
    run(
        "ip",
        "link",
        "add",
        ifname,
        "netns",
        ns,
        "type",
        "veth",
        "peer",
        "name",
        f"{ifname}p",
        "netns",
        br,
    )
    run("ip", "-n", br, "link", "set", f"{ifname}p", "master", bridge, "up")
    for addr in addrs:
        run("ip", "-n", ns, "addr", "add", addr, "dev", ifname)
    run("ip", "-n", ns, "link", "set", ifname, "up")


def _spawn(ns: str, program: str, cfg: Path, status: Path, log: Path) -> subprocess.Popen[bytes]:
    """Run the helper ``program`` (tests/lab/tools) inside ``ns``; output goes to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            ["ip", "netns", "exec", ns, *tool(program, str(cfg), str(status))],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    prefix = f"ovpr-{secrets.token_hex(3)}"
    directory = tmp_path_factory.mktemp("prober")
    created: list[str] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for suffix in ("br", "a", "b", "c", "d"):
            run("ip", "netns", "add", f"{prefix}-{suffix}")
            created.append(f"{prefix}-{suffix}")
            run("ip", "-n", f"{prefix}-{suffix}", "link", "set", "lo", "up")
        for bridge in ("br0", "br1"):
            run("ip", "-n", f"{prefix}-br", "link", "add", bridge, "type", "bridge")
            run("ip", "-n", f"{prefix}-br", "link", "set", bridge, "up")
        _link(prefix, "a", "a0", "br0", ["10.77.0.1/24", "192.0.2.1/24"])
        _link(prefix, "a", "a1", "br1", ["10.77.1.1/24"])
        _link(prefix, "b", "b0", "br0", ["10.77.0.2/24", "192.0.2.2/24"])
        _link(prefix, "c", "c0", "br0", ["10.77.0.3/24", "192.0.2.3/24"])
        _link(prefix, "d", "d1", "br1", ["10.77.1.2/24"])

        def node(name: str, site: str, private: list[str], public: list[str]) -> Node:
            return Node(
                name,
                f"{prefix}-{name}",
                site,
                private,
                public,
                PrivateKey.generate(),
                directory / f"{name}.json",
            )

        nodes = {
            "a": node("a", "s1", ["10.77.0.1", "10.77.1.1"], ["192.0.2.1"]),
            # B's lease claims 10.77.1.2 too: from A that address is D
            "b": node("b", "s1", ["10.77.0.2", "10.77.1.2"], ["192.0.2.2"]),
            "c": node("c", "s2", ["10.77.0.3"], ["192.0.2.3"]),
            "d": node("d", "s3", ["10.77.1.2"], ["10.77.1.2"]),
        }
        peers_of = {"a": ["b", "c", "d"], "b": ["a", "c"], "c": ["a", "b"]}
        for name, peer_names in peers_of.items():
            me = nodes[name]
            cfg = {
                "key": me.key.reveal_base64(),
                "site": me.site,
                "private": me.private,
                "hold": HOLD,
                "peers": {
                    p: {
                        "key": nodes[p].key.public_key().base64,
                        "site": nodes[p].site,
                        "private": nodes[p].private,
                        "public": nodes[p].public,
                    }
                    for p in peer_names
                },
            }
            cfg_path = directory / f"{name}-cfg.json"
            cfg_path.write_text(json.dumps(cfg))
            me.proc = _spawn(
                me.ns, "probe_agent", cfg_path, me.status_path, directory / f"{name}.log"
            )
            procs.append(me.proc)
        d = nodes["d"]
        hostile_cfg = directory / "d-cfg.json"
        known = [nodes["a"].key.public_key().base64]
        hostile_cfg.write_text(json.dumps({"key": d.key.reveal_base64(), "known": known}))
        hostile_status = directory / "d.json"
        d.proc = _spawn(d.ns, "probe_hostile", hostile_cfg, hostile_status, directory / "d.log")
        procs.append(d.proc)
        yield World(prefix, directory, nodes, hostile_status)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for ns in reversed(created):
            with contextlib.suppress(AssertionError):
                run("ip", "netns", "del", ns)


def test_peers_verify_each_other_and_choose_by_site(world: World) -> None:
    a, b, c = (world.nodes[n] for n in "abc")
    wait_until(lambda: a.chosen("b") == "10.77.0.2", 5, "A verifies B privately", interval=0.05)
    wait_until(lambda: a.verified("c", "192.0.2.3"), 5, "A verifies C publicly", interval=0.05)
    assert a.chosen("c") == "192.0.2.3"
    assert a.status()["chosen"]["c"][1] == "public"
    wait_until(lambda: b.verified("a", "10.77.0.1"), 5, "B verifies A", interval=0.05)
    wait_until(lambda: c.verified("b", "192.0.2.2"), 5, "C verifies B", interval=0.05)
    # same-site candidates are all probed; another site's private addresses are not
    assert set(a.status()["stats"]["b"]) == {"10.77.0.2", "10.77.1.2", "192.0.2.2"}
    assert set(a.status()["stats"]["c"]) == {"192.0.2.3"}
    wait_until(
        lambda: a.verified("b", "192.0.2.2"), 10.0, "B's public path verified too", interval=0.05
    )


def test_reflexive_address_confirmed_by_other_site_peer(world: World) -> None:
    a, b = world.nodes["a"], world.nodes["b"]
    # C (site s2) sees A's probes from 192.0.2.1; B (same site) sees 10.77.0.1; D (site
    # s3) sees A's private 10.77.1.1, which A excludes as its own
    wait_until(
        lambda: a.status().get("public") == ["192.0.2.1"],
        10.0,
        "A's public address confirmed",
        interval=0.05,
    )
    wait_until(
        lambda: b.status().get("public") == ["192.0.2.2"],
        10.0,
        "B's public address confirmed",
        interval=0.05,
    )


def test_wakes_only_on_material_changes(world: World) -> None:
    a = world.nodes["a"]

    def settled() -> bool:
        # every path answered twice: each observation of A has been corroborated
        paths = [s for peer in a.status().get("stats", {}).values() for s in peer.values()]
        return bool(paths) and all(s["received"] >= 2 for s in paths if s["verified"])

    wait_until(
        lambda: a.verified("b", "192.0.2.2") and settled(), 15, "steady state", interval=0.05
    )
    before, replies_before = a.status()["wakes"], a.status()["counters"]["replies_received"]
    time.sleep(3)
    after, replies_after = a.status()["wakes"], a.status()["counters"]["replies_received"]
    assert replies_after - replies_before > 15  # RTT samples keep arriving...
    assert after - before <= 1  # ...without waking the daemon


def test_same_ip_other_key_cannot_validate_path(world: World) -> None:
    a = world.nodes["a"]
    wait_until(
        lambda: a.verified("d", "10.77.1.2"), 10.0, "A verifies D at 10.77.1.2", interval=0.05
    )
    wait_until(
        lambda: (
            world.hostile_status.exists()
            and json.loads(world.hostile_status.read_text()).get("hostile", 0) >= 2
        ),
        15,
        "D's hostile replies arrive",
        interval=0.05,
    )
    wait_until(
        lambda: a.rejected("unsolicited") >= 2 and a.rejected("mac") >= 2,
        10.0,
        "replies rejected",
        interval=0.05,
    )
    stats = a.status()["stats"]["b"]["10.77.1.2"]
    assert not stats["verified"] and stats["received"] == 0 and stats["sent"] >= 2
    assert all(h[2] != "10.77.1.2" for h in a.status()["history"] if h[1] == "b")


def test_forged_and_replayed_replies_rejected(world: World) -> None:
    a = world.nodes["a"]
    wait_until(lambda: a.chosen("b") == "10.77.0.2", 10.0, "A verifies B privately", interval=0.05)
    replay, mac = a.rejected("replay"), a.rejected("mac")
    received = a.status()["stats"]["b"]["10.77.0.2"]["received"]
    out = run("ip", "netns", "exec", world.nodes["b"].ns, *tool("probe_forge"))
    assert json.loads(out) == {"sent": 5}
    wait_until(lambda: a.rejected("replay") >= replay + 3, 10.0, "replays counted", interval=0.05)
    wait_until(lambda: a.rejected("mac") >= mac + 2, 10.0, "forgeries counted", interval=0.05)
    assert a.status()["stats"]["b"]["10.77.0.2"]["received"] > received  # real ones still in
    assert a.chosen("b") == "10.77.0.2"


def test_dropped_private_path_fails_over_and_moves_back(world: World) -> None:
    a = world.nodes["a"]
    wait_until(lambda: a.chosen("b") == "10.77.0.2", 10.0, "A on B's private path", interval=0.05)
    wait_until(
        lambda: a.verified("b", "192.0.2.2"), 10.0, "B's public path verified", interval=0.05
    )
    # B drops everything A sends from its private address: A's probes and A's replies
    world.nft(
        "b",
        "table inet ovpr_test {\n"
        "  chain in {\n"
        "    type filter hook input priority 0;\n"
        "    ip saddr 10.77.0.1 udp dport 8473 drop\n"
        "    ip saddr 10.77.0.1 udp sport 8473 drop\n"
        "  }\n"
        "}\n",
    )
    broke = time.time()
    try:
        wait_until(lambda: a.chosen("b") == "192.0.2.2", 6, "failover to public", interval=0.05)
        moved = next(h for h in a.status()["history"] if h[1] == "b" and h[0] >= broke)
        assert moved[2] == "192.0.2.2" and moved[3] == "public"
        assert moved[0] - broke < 3.0, f"failover took {moved[0] - broke:.2f}s"
        assert "failover" in moved[4]
        print(f"failover after {moved[0] - broke:.2f}s")
        assert not a.verified("b", "10.77.0.2")
    finally:
        run(
            "ip",
            "netns",
            "exec",
            world.nodes["b"].ns,
            "nft",
            "delete",
            "table",
            "inet",
            "ovpr_test",
        )
    restored = time.time()
    wait_until(
        lambda: a.verified("b", "10.77.0.2"), 8, "private path verified again", interval=0.05
    )
    reverified = time.time()
    wait_until(
        lambda: a.chosen("b") == "10.77.0.2", HOLD + 8, "moved back to private", interval=0.05
    )
    back = next(h for h in a.status()["history"] if h[1] == "b" and h[0] >= restored)
    assert back[2] == "10.77.0.2"
    # not before the hold: the recovered path must prove itself first
    assert back[0] - reverified >= HOLD - 0.6, (back[0], reverified)
    assert back[0] - reverified <= HOLD + 1.5
    assert back[4].startswith("moved to better path")
    print(f"moved back {back[0] - reverified:.2f}s after the private path was verified again")
