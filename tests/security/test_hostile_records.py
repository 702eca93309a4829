"""Hostile lease records in etcd (issue 9, "lease validation"), against real daemons.

Multi-cloud world, backend ``vxlan`` and ``vxlan+wireguard``, overlayd on four hosts of
three sites. Each case writes one hostile record under its own subnet key (with etcdctl,
in the etcd namespace) and checks that every daemon logs at most one short warning about
it, programs no FDB entry and no WireGuard endpoint toward the bad address, and that the
full reachability matrix stays. The hostile records are of another site and carry no
probe port, so without validation every daemon would guess their first public address as
the path (the FDB destination, or the WireGuard endpoint).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

import pytest

from tests.daemons import BIN, OverlaydProc, full_matrix, ns_run, running, wait_until
from tests.lab.world import World, build_multicloud_world, destroy

pytestmark = pytest.mark.root
HOSTS = ("a1", "a2", "b1", "bare")
NETWORK = IPv4Network("10.244.0.0/16")
PREFIX = "/overlayd/network/subnets/"
DEVICE = "overlay.1"
MAX_LINE = 300  # a log line about a hostile record stays short
HARMLESS = "192.0.2.77"  # an internet address nobody uses: where a "valid" record points


@pytest.fixture(scope="module", params=["vxlan", "vxlan+wireguard"])
def backend(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture(scope="module")
def world(
    prefix_factory: Callable[[], str], tmp_path_factory: pytest.TempPathFactory, backend: str
) -> Iterator[World]:
    w = build_multicloud_world(prefix_factory(), workdir=tmp_path_factory.mktemp("hostile"))
    try:
        ns_run(w.host("a1").ns.name, str(BIN / "overlayctl"), "--etcd-endpoints",
               w.etcd_endpoint, "network", "init", "--network", str(NETWORK),
               "--backend", backend,
               # the hostile cases write 10.244.201-209: never a live node's key (its owner
               # would restore it: tests/security/test_own_lease.py)
               "--subnet-max", "10.244.199.0")  # fmt: skip
        yield w
    finally:
        destroy(w)


@pytest.fixture(scope="module")
def daemons(world: World) -> Iterator[dict[str, OverlaydProc]]:
    with running(world, HOSTS) as procs:
        full_matrix(procs, timeout=30)
        yield procs


def etcdctl(world: World, *args: str, value: str | None = None) -> str:
    argv = world.etcd_ns.argv(["etcdctl", f"--endpoints={world.etcd_endpoint}", *args])
    done = subprocess.run(argv, input=value, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def key_of(subnet: IPv4Network) -> str:
    return f"{PREFIX}{subnet.network_address}-{subnet.prefixlen}"


def record(backend: str, public_ip: str, mac: str, **extra: Any) -> dict[str, Any]:
    """A record of another site, pointing at ``public_ip``; no probe port: peers guess."""
    return {
        "PublicIP": public_ip,
        "PublicIPs": [public_ip],
        "BackendType": backend,
        "BackendData": {"VtepMAC": mac, "VNI": 1},
        "Site": "elsewhere",
        "PublicKey": base64.b64encode(os.urandom(32)).decode(),
        "WireGuardPort": 51820,
        **extra,
    }


def fdb(d: OverlaydProc) -> str:
    return ns_run(d.ns, "bridge", "fdb", "show", "dev", DEVICE).stdout


def wg_endpoints(d: OverlaydProc) -> str:
    """``wg show <dev> endpoints`` of the daemon's WireGuard device ('' without one)."""
    out = ns_run(d.ns, "ip", "-o", "link", "show", "type", "tun").stdout
    names = [line.split(":")[1].strip() for line in out.splitlines() if "ovwg" in line]
    if not names:
        return ""
    # wireguard-go's UAPI sockets are shared by every namespace: ask from here, by name
    done = subprocess.run(["wg", "show", names[0], "endpoints"], capture_output=True, text=True)
    return done.stdout


def log_size(d: OverlaydProc) -> int:
    return d.log_file.stat().st_size


def log_since(d: OverlaydProc, offset: int) -> str:
    with open(d.log_file, "rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace")


@dataclass(frozen=True)
class Case:
    name: str
    subnet: IPv4Network
    public_ip: str
    extra: dict[str, Any]
    bad: str  # no FDB entry or WireGuard endpoint may point here


def mac(n: int) -> str:
    return f"02:ee:00:00:00:{n:02x}"


CASES = [
    Case("1 MB Node", IPv4Network("10.244.201.0/24"), HARMLESS,
         {"Node": "n" * 1_000_000}, HARMLESS),
    Case("200,000-item list in PublicIPs", IPv4Network("10.244.202.0/24"), HARMLESS,
         {"PublicIPs": [["1"] * 200_000]}, HARMLESS),
    Case("PublicIP loopback", IPv4Network("10.244.203.0/24"), "127.0.0.1", {}, "127.0.0.1"),
    Case("PublicIP unspecified", IPv4Network("10.244.204.0/24"), "0.0.0.0", {}, "0.0.0.0"),
    Case("PublicIP multicast", IPv4Network("10.244.205.0/24"), "224.0.0.1", {}, "224.0.0.1"),
    Case("PublicIP broadcast", IPv4Network("10.244.206.0/24"), "255.255.255.255", {},
         "255.255.255.255"),
    Case("PublicIP link-local", IPv4Network("10.244.207.0/24"), "169.254.1.1", {},
         "169.254.1.1"),
    Case("PublicIP inside the overlay", IPv4Network("10.244.208.0/24"), "10.244.77.7", {},
         "10.244.77.7"),
    Case("PublicIP of the etcd host", IPv4Network("10.244.209.0/24"), "192.0.2.10", {},
         "192.0.2.10"),
]  # fmt: skip


def check_hostile(
    world: World,
    daemons: dict[str, OverlaydProc],
    subnet: IPv4Network,
    value: str,
    bad: str,
    hostile_mac: str | None,
) -> None:
    """Write ``value`` at ``subnet``; every daemon: at most one short warning about it, no
    FDB entry (nor for ``hostile_mac``) or WireGuard endpoint toward ``bad``, and the full
    matrix stays."""
    offsets = {n: log_size(d) for n, d in daemons.items()}
    etcdctl(world, "put", key_of(subnet), value=value)
    try:
        mention = str(subnet)
        wait_until(
            lambda: all(mention in log_since(d, offsets[n]) for n, d in daemons.items()),
            20,
            f"every daemon noticing {subnet}",
        )
        time.sleep(2)  # a reconcile pass or two after the event
        for n, d in daemons.items():
            new = log_since(d, offsets[n])
            about = [line for line in new.splitlines() if mention in line]
            warnings = [line for line in about if re.search(r" (WARNING|ERROR) ", line)]
            longest = max((len(line) for line in new.splitlines()), default=0)
            assert longest <= MAX_LINE, f"{n}: a {longest}-char log line: {new[:400]!r}"
            assert len(warnings) <= 1, f"{n}: {warnings}"
            assert len(about) <= 2, f"{n}: {about}"  # at most 'joined' and one warning
            table = fdb(d)
            assert f"dst {bad} " not in table, f"{n} programs {bad}:\n{table}"
            if hostile_mac is not None:
                assert hostile_mac not in table, f"{n} programs {hostile_mac}:\n{table}"
            endpoints = wg_endpoints(d)
            assert f"\t{bad}:" not in endpoints, f"{n}: WireGuard endpoint {bad}:\n{endpoints}"
        full_matrix(daemons)
    finally:
        etcdctl(world, "del", key_of(subnet))
        if hostile_mac is not None:
            wait_until(
                lambda: all(hostile_mac not in fdb(d) for d in daemons.values()),
                20,
                f"{hostile_mac} gone from every FDB",
            )


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_record_is_ignored(
    world: World, daemons: dict[str, OverlaydProc], backend: str, case: Case
) -> None:
    hostile_mac = mac(CASES.index(case) + 1)
    value = json.dumps(record(backend, case.public_ip, hostile_mac, **case.extra))
    check_hostile(world, daemons, case.subnet, value, case.bad, hostile_mac)


def leases(world: World) -> list[dict[str, Any]]:
    out = ns_run(world.host("a1").ns.name, str(BIN / "overlayctl"), "--etcd-endpoints",
                 world.etcd_endpoint, "leases", "list", "-o", "json").stdout  # fmt: skip
    found: list[dict[str, Any]] = json.loads(out)
    return found


def test_duplicate_vtep_mac_and_key_at_a_lower_subnet_loses(
    world: World, daemons: dict[str, OverlaydProc], backend: str
) -> None:
    """A newcomer copying a live peer's VTEP MAC, WireGuard key and site under a lower
    subnet is skipped (the older lease wins); before, 'the lower subnet wins' knocked the
    real peer out (its VXLAN peers by MAC, its WireGuard peers by key)."""
    held = [r for r in leases(world) if "vtep_mac" in r]
    victim = max(held, key=lambda r: IPv4Network(r["subnet"]))
    used = {IPv4Network(r["subnet"]) for r in held}
    lower = next(
        s for s in NETWORK.subnets(new_prefix=24)
        if s.network_address.packed[2] > 0 and s not in used
    )  # fmt: skip
    assert lower < IPv4Network(victim["subnet"]), "no free subnet below the victim's"
    impostor = record(backend, "192.0.2.66", victim["vtep_mac"], Node="impostor")
    impostor.update(Site=victim["site"], PublicKey=victim["public_key"])
    value = json.dumps(impostor)
    check_hostile(world, daemons, lower, value, "192.0.2.66", None)
