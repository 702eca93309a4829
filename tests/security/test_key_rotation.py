"""Issue 9, key rotation: ``overlayctl node rotate-key`` with real daemons, etcd and
wireguard-go in the multi-cloud world, for the ``wireguard`` and ``vxlan+wireguard``
backends (three hosts across sites; node ``a1`` rotates).

While a 0.1 s ping runs across the rotation in both directions, ``a1`` makes a new key;
afterwards its lease, its WireGuard device and its peers' devices hold the new public key
and not the old one, the key file changed (mode 0600), probes for the old key go
unanswered -- addressed to ``a1``'s old key from a peer's namespace, and signed with the
old private key from the internet namespace -- while the new key's are answered. An
unknown node is refused with exit code 1 and nothing is requested.
"""

from __future__ import annotations

import functools
import json
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from overlayd.disk.node_key import KEY_FILE
from overlayd.values.keys import PrivateKey
from tests.daemons import (
    BIN,
    Background,
    OverlaydProc,
    full_matrix,
    ns_run,
    pair_report,
    running,
    wait_until,
)
from tests.integration.test_wireguard_backend import internet, lease, wg, wg_device
from tests.lab.world import World, multicloud_world

pytestmark = pytest.mark.root
NETWORK = "10.244.0.0/16"
ROTATED = "a1"
PROBE_CLIENT = Path(__file__).with_name("probe_client.py")
MAX_LOST = 10  # pings at 0.1 s: under one second of traffic


@dataclass(frozen=True)
class Case:
    backend: str
    hosts: tuple[str, ...]
    pinger: str  # pings ROTATED, and is pinged by it, across sites (WireGuard)
    wg_peers: tuple[str, ...]  # the hosts that reach ROTATED over WireGuard


CASES = [
    Case("wireguard", (ROTATED, "b1", "bare"), "bare", ("b1", "bare")),
    # a2 is in a1's site: VXLAN between them, WireGuard only to b1
    Case("vxlan+wireguard", (ROTATED, "a2", "b1"), "b1", ("b1",)),
]


@pytest.fixture(params=CASES, ids=[c.backend for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    result: Case = request.param
    return result


@pytest.fixture
def world(case: Case, prefix: str, tmp_path: Path) -> Iterator[World]:
    with multicloud_world(prefix, workdir=tmp_path / "world") as w:
        ctl(w, "network", "init", "--network", NETWORK, "--backend", case.backend)
        yield w


def ctl(world: World, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``overlayctl`` against the world's etcd, run on host ``b1`` (not the rotated node)."""
    argv = [str(BIN / "overlayctl"), "--etcd-endpoints", world.etcd_endpoint, *args]
    return ns_run(world.host("b1").ns.name, *argv, check=check, timeout=60)


def key_file(d: OverlaydProc) -> Path:
    return d.workdir / "state" / KEY_FILE


def public_key_of(path: Path) -> str:
    return PrivateKey.from_base64(path.read_text()).public_key().base64


def probe(ns: str, key: Path, recipient: str, address: str) -> dict[str, object]:
    """Probes ``recipient`` at ``address`` signed with the private key in ``key``."""
    out = ns_run(ns, str(BIN / "python"), str(PROBE_CLIENT), str(key), recipient, address).stdout
    result: dict[str, object] = json.loads(out)
    return result


def wg_peers(d: OverlaydProc) -> set[str]:
    return set(wg("show", wg_device(d), "peers").split())


def verified_both_ways(a: OverlaydProc, b: OverlaydProc) -> bool:
    """Each of ``a`` and ``b`` has a probe-verified path to the other."""
    return bool(a.peers().get(b.node, {}).get("verified")) and bool(
        b.peers().get(a.node, {}).get("verified")
    )


def test_rotate_key_with_traffic_running(case: Case, world: World, tmp_path: Path) -> None:
    with running(world, case.hosts) as daemons:
        node, pinger = daemons[ROTATED], daemons[case.pinger]
        full_matrix(daemons)
        for name in case.hosts[1:]:  # probes verified both ways: the old key is in use
            both = functools.partial(verified_both_ways, node, daemons[name])
            wait_until(both, 20, f"{name} <-> {ROTATED} verified")
        old = str(lease(world, ROTATED)["public_key"])
        saved_old = tmp_path / "old-node-key"
        saved_old.write_text(key_file(node).read_text())
        saved_old.chmod(0o600)
        assert public_key_of(saved_old) == old
        assert wg("show", wg_device(node), "public-key").strip() == old
        for name in case.wg_peers:
            assert old in wg_peers(daemons[name])
        node_public = str(node.host.public)
        # what the rejection below relies on: the old key is answered before the rotation
        assert probe(pinger.ns, key_file(pinger), old, node_public)["answered"]

        inbound, outbound = Background(pinger, node), Background(node, pinger)
        time.sleep(1.0)
        t0 = time.monotonic()
        done = ctl(world, "node", "rotate-key", ROTATED, check=False)
        took = time.monotonic() - t0
        time.sleep(2.0)
        results = {"inbound": inbound.stop(), "outbound": outbound.stop()}
        assert done.returncode == 0, done.stderr
        new = str(lease(world, ROTATED)["public_key"])
        assert new != old and new in done.stdout, done.stdout
        assert took < 10, f"rotate-key took {took:.1f}s"
        print(f"{case.backend}: rotate-key took {took:.2f}s, pings (sent, received) {results}")
        for what, (sent, got) in results.items():
            assert sent > 25, (what, sent)
            report = pair_report(node, pinger)
            assert sent - got <= MAX_LOST, f"{what}: {sent - got} of {sent} lost\n{report}"

        # the node's device and every WireGuard peer switched; the old key is gone
        assert wg("show", wg_device(node), "public-key").strip() == new
        for name in case.wg_peers:
            keys = wg_peers(daemons[name])
            assert new in keys and old not in keys, (name, keys)
        for name in set(case.hosts) - set(case.wg_peers) - {ROTATED}:
            assert not {old, new} & wg_peers(daemons[name])  # a VXLAN peer: no WireGuard peer

        # the key file holds the new key, 0600, nothing left beside it
        path = key_file(node)
        assert public_key_of(path) == new
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert not [p.name for p in path.parent.iterdir() if p.name.startswith(".")]

        # probes: the old key is no longer accepted, the new one is -- addressed to the
        # node from a peer's namespace, and signed as the node from the internet
        assert not probe(pinger.ns, key_file(pinger), old, node_public)["answered"]
        assert probe(pinger.ns, key_file(pinger), new, node_public)["answered"]
        pinger_key = str(lease(world, pinger.node)["public_key"])
        pinger_public = str(pinger.host.public)
        inet = internet(world).name
        assert not probe(inet, saved_old, pinger_key, pinger_public)["answered"]
        assert probe(inet, path, pinger_key, pinger_public)["answered"]

        # one line on the node, one on each peer; no private key material anywhere
        text = node.log_file.read_text()
        assert text.count("node key rotated") == 1, text[-3000:]
        for secret in (saved_old.read_text().strip(), path.read_text().strip()):
            assert secret not in text
        for name in case.hosts[1:]:
            peer_log = daemons[name].log_file.read_text()
            assert peer_log.count("has a new public key") == 1
            # peers re-verify the path in use first: no VXLAN path moves on the way
            after = peer_log[peer_log.index("has a new public key") :].splitlines()
            moved = [line for line in after if "on vxlan" in line and "+0/-0 fdb" not in line]
            assert not moved, (name, moved)

        # an unknown node: a clear error, exit code 1, nothing requested
        unknown = ctl(world, "node", "rotate-key", "no-such-node", check=False)
        assert unknown.returncode == 1, unknown
        assert "no lease for node 'no-such-node'" in unknown.stderr
        full_matrix(daemons)
