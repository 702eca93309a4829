"""The WireGuard driver against real wireguard-go, in network namespaces (needs root).

World: a bridge namespace ``ovwg-<id>-br`` and node namespaces ``ovwg-<id>-a/b/c``, each
with a veth on the bridge (198.51.100.1-3/24 underlay). In every node namespace an agent
(tests/lab/tools/wireguard_agent.py, run with ``ip netns exec``) plays the daemon's
reconcile loop: it re-reads a JSON file with the desired config, runs ``sync`` every 100 ms
or when wireguard-go exits, re-adds the overlay address when the device was recreated, and
reports in a status file. The test process itself stays in the root namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from overlayd.dataplane.wireguard.uapi import UapiClient, socket_path
from overlayd.values.errors import WireGuardError
from overlayd.values.keys import PrivateKey
from overlayd.values.wireguard import interface_name
from tests.daemons import wait_until
from tests.lab.netns import tool

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

PORT = 51820


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=30)


@dataclass
class Node:
    name: str
    ns: str
    underlay: str
    overlay: str
    dir: Path
    key: PrivateKey = field(default_factory=PrivateKey.generate)
    ifname: str = field(default_factory=lambda: interface_name(secrets.token_hex(16)))
    peers: list[dict[str, Any]] = field(default_factory=list)
    agent: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.dir / f"{self.name}.json"

    @property
    def status_path(self) -> Path:
        return self.dir / f"{self.name}.status"

    def peer_entry(self, *, endpoint: bool = True, keepalive: int = 0) -> dict[str, Any]:
        """How other nodes configure this one as a peer."""
        return {
            "public_key": self.key.public_key().base64,
            "endpoint": f"{self.underlay}:{PORT}" if endpoint else None,
            "allowed_ips": [f"{self.overlay}/32"],
            "keepalive": keepalive,
        }

    def write_config(self, **extra: Any) -> None:
        cfg = {
            "ifname": self.ifname,
            "private_key": self.key.reveal_base64(),
            "port": PORT,
            "address": f"{self.overlay}/24",
            "peers": self.peers,
            "log": str(self.dir / f"{self.name}-wireguard-go.log"),
            **extra,
        }
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cfg))
        os.replace(tmp, self.config_path)

    def status(self) -> dict[str, Any]:
        try:
            result: dict[str, Any] = json.loads(self.status_path.read_text())
        except FileNotFoundError:
            return {}
        return result

    def start_agent(self) -> None:
        self.status_path.unlink(missing_ok=True)
        log = (self.dir / f"{self.name}-agent.log").open("ab")
        self.agent = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.ns,
                *tool("wireguard_agent", str(self.config_path), str(self.status_path)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_until(
            lambda: self.status().get("loops", 0) >= 1, 10.0, f"agent {self.name}", interval=0.05
        )

    def stop_agent(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            self.agent.wait(timeout=10)
        self.agent = None

    def ping(self, other: Node, timeout: int = 1) -> bool:
        out = run(
            "ip",
            "netns",
            "exec",
            self.ns,
            "ping",
            "-c1",
            f"-W{timeout}",
            other.overlay,
            check=False,
        )
        return out.returncode == 0

    def wg_dump(self) -> dict[str, dict[str, str]]:
        """Peers as ``wg show dump`` reports them, by public key."""
        out = run("ip", "netns", "exec", self.ns, "wg", "show", self.ifname, "dump").stdout
        peers = {}
        for line in out.splitlines()[1:]:
            pub, _psk, endpoint, allowed, handshake, rx, tx, keepalive = line.split("\t")
            peers[pub] = {
                "endpoint": endpoint,
                "allowed": allowed,
                "handshake": handshake,
                "rx": rx,
                "tx": tx,
                "keepalive": keepalive,
            }
        return peers

    def wg_pid(self) -> int:
        return UapiClient(socket_path(self.ifname)).server_pid()


class World:
    def __init__(self, tmp: Path) -> None:
        self.id = secrets.token_hex(3)
        self.bridge_ns = f"ovwg-{self.id}-br"
        self.namespaces: list[str] = []
        self.nodes: dict[str, Node] = {}
        self.tmp = tmp

    def setup(self) -> None:
        self._add_ns(self.bridge_ns)
        run("ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.bridge_ns, "link", "set", "br0", "up")
        for index, name in enumerate("abc", start=1):
            ns = f"ovwg-{self.id}-{name}"
            self._add_ns(ns)
            run(
                "ip",
                "-n",
                ns,
                "link",
                "add",
                "u0",
                "type",
                "veth",
                "peer",
                "name",
                f"p{name}",
                "netns",
                self.bridge_ns,
            )
            run("ip", "-n", self.bridge_ns, "link", "set", f"p{name}", "master", "br0", "up")
            run("ip", "-n", ns, "addr", "add", f"198.51.100.{index}/24", "dev", "u0")
            run("ip", "-n", ns, "link", "set", "u0", "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
            self.nodes[name] = Node(name, ns, f"198.51.100.{index}", f"10.99.0.{index}", self.tmp)

    def _add_ns(self, ns: str) -> None:
        run("ip", "netns", "add", ns)
        self.namespaces.append(ns)

    def teardown(self) -> None:
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.stop_agent()
        for ns in self.namespaces:
            # every process left in our namespaces is ours (agents, wireguard-go)
            pids = run("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            run("ip", "netns", "del", ns, check=False)
        for node in self.nodes.values():
            socket_path(node.ifname).unlink(missing_ok=True)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        w.setup()
        yield w
    finally:
        w.teardown()
        for log in sorted(tmp_path.glob("*.log")):
            text = log.read_text(errors="replace").strip()
            if text:
                print(f"--- {log.name}\n{text[-2000:]}")


def pair(world: World) -> tuple[Node, Node]:
    a, b = world.nodes["a"], world.nodes["b"]
    a.peers = [b.peer_entry()]
    b.peers = [a.peer_entry()]
    for node in (a, b):
        node.write_config()
        node.start_agent()
    wait_until(lambda: a.ping(b), 10.0, "ping a -> b", interval=0.05)
    return a, b


def test_tunnel_ping_and_third_peer_leaves_sessions_alone(world: World) -> None:
    a, b = pair(world)
    assert a.status()["kind"] == "userspace"
    assert b.ping(a)
    b_key, a_key = b.key.public_key().base64, a.key.public_key().base64
    before_a, before_b = a.wg_dump()[b_key], b.wg_dump()[a_key]
    assert before_a["handshake"] != "0"

    # c joins: everyone adds one peer; c can only dial out (no endpoint for it elsewhere)
    c = world.nodes["c"]
    c.peers = [a.peer_entry(keepalive=1), b.peer_entry(keepalive=1)]
    c.write_config()
    c.start_agent()
    a.peers.append(c.peer_entry(endpoint=False))
    b.peers.append(c.peer_entry(endpoint=False))
    a.write_config()
    b.write_config()
    c_key = c.key.public_key().base64
    wait_until(lambda: c_key in a.wg_dump(), 10.0, "c in a's peers", interval=0.05)
    wait_until(lambda: a.ping(c), 10.0, "ping a -> c", interval=0.05)
    assert c.ping(b)

    after_a, after_b = a.wg_dump()[b_key], b.wg_dump()[a_key]
    assert after_a["handshake"] == before_a["handshake"]
    assert after_b["handshake"] == before_b["handshake"]
    assert int(after_a["tx"]) >= int(before_a["tx"])  # counters kept: same session objects


def test_endpoint_learned_from_keepalive_handshake(world: World) -> None:
    a, c = world.nodes["a"], world.nodes["c"]
    a.peers = [c.peer_entry(endpoint=False)]
    c.peers = [a.peer_entry(keepalive=1)]
    for node in (a, c):
        node.write_config()
        node.start_agent()
    c_key = c.key.public_key().base64
    assert a.wg_dump()[c_key]["endpoint"] in ("(none)", f"{c.underlay}:{PORT}")
    wait_until(
        lambda: a.wg_dump()[c_key]["endpoint"] == f"{c.underlay}:{PORT}",
        10.0,
        "a learns c's endpoint",
        interval=0.05,
    )
    assert a.ping(c)
    # the learned endpoint is not a difference: the agent stops changing anything
    loops = a.status()["loops"]
    wait_until(lambda: a.status()["loops"] >= loops + 5, 10.0, "more loops", interval=0.05)
    assert a.status()["last_changes"] == 0
    assert a.status()["changed"] == 1  # only the initial add


def test_killed_wireguard_go_is_restarted_and_restored(world: World) -> None:
    a, b = pair(world)
    old_pid = a.wg_pid()
    killed = time.monotonic()
    os.kill(old_pid, signal.SIGKILL)
    wait_until(lambda: a.status().get("recreated", 0) >= 2, 10.0, "a restarted", interval=0.05)
    restored = time.monotonic() - killed
    wait_until(lambda: a.ping(b, timeout=1), 10.0, "ping a -> b again", interval=0.05)
    ping_back = time.monotonic() - killed
    print(f"restart: config restored {restored:.3f}s after SIGKILL, ping ok after {ping_back:.3f}s")
    assert restored < 3.0
    assert ping_back < 5.0
    status = a.status()
    assert status["starts"] == 2
    assert a.wg_pid() != old_pid
    assert b.key.public_key().base64 in a.wg_dump()


def test_daemon_exit_leaves_data_plane_and_restart_adopts(world: World) -> None:
    a, b = pair(world)
    pid = a.wg_pid()
    handshake = a.wg_dump()[b.key.public_key().base64]["handshake"]
    a.stop_agent()  # SIGTERM: the daemon's normal stop
    assert a.wg_pid() == pid
    assert a.ping(b)
    a.start_agent()
    status = a.status()
    assert (status["recreated"], status["starts"], status["changed"]) == (0, 0, 0)
    assert a.wg_pid() == pid
    assert a.wg_dump()[b.key.public_key().base64]["handshake"] == handshake
    # asked to stop on exit: wireguard-go and its device go away
    a.write_config(stop_on_exit=True)
    time.sleep(0.3)
    a.stop_agent()
    assert not socket_path(a.ifname).exists() or not _answers(a)
    assert "does not exist" in run("ip", "-n", a.ns, "link", "show", a.ifname, check=False).stderr


def _answers(node: Node) -> bool:
    try:
        node.wg_pid()
    except WireGuardError:
        return False
    return True


def test_a_new_private_key_starts_a_handshake_with_every_peer_at_once(world: World) -> None:
    """A key change (a rotation, overlayd/agent/rotation.py) makes the device initiate a
    handshake with each peer itself, with no traffic and no keepalive configured: a's
    bytes sent to b grow by one initiation (148 bytes) within 2 s, and the keepalive
    setting is back to what it was. Without it, a's first packet after the rotation
    initiates, and if the peer has learned the new key by then the two initiations cross
    and both wait out WireGuard's 5 s retry (``kicks_for``)."""
    a, b = pair(world)
    b_key = b.key.public_key().base64
    before = int(a.wg_dump()[b_key]["tx"])
    a.key = PrivateKey.generate()
    a.write_config()
    wait_until(
        lambda: int(a.wg_dump()[b_key]["tx"]) >= before + 148, 2.0, "a initiates with b",
        interval=0.05,
    )  # fmt: skip
    assert a.wg_dump()[b_key]["keepalive"] == "off"
    # b learns a's new key; its new peer's keepalive (as overlayd sets one) initiates
    b.peers = [a.peer_entry(keepalive=25)]
    b.write_config()
    wait_until(lambda: a.ping(b), 3.0, "ping a -> b under a's new key", interval=0.05)
