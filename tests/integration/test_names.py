"""Issue 13: every daemon answers DNS for the network's zone, in the multi-cloud world.

Cloud B's private range collides with cloud A's. Daemons on a1, a2 (cloud A), b1 (cloud B)
and bare; a1 and b1 both claim the alias ``shared`` (a1 starts first: its lease is the
older, it wins). From every host ``dig @<own overlay address>`` resolves every node, site
name and alias; PTR; REFUSED for other zones; nothing answers from the internet
namespace; a TCP client reaches ``b1.overlay.internal`` through the responder (the host's
resolver pointed at it) and through ``--hosts-file`` mode; a joining node's name appears
on every host and a revoked one's is NXDOMAIN.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from tests.daemons import BIN, OverlaydProc, ns_run, wait_until
from tests.lab.netns import Namespace, tool
from tests.lab.world import World, build_multicloud_world, destroy, ping

pytestmark = pytest.mark.root
ZONE = "overlay.internal"
DIG = shutil.which("dig") or "/usr/bin/dig"
ALIASES = {"a1": ("peer0.org1", "shared"), "b1": ("peer1.org2", "shared")}
HOSTS = ("a1", "a2", "b1", "bare")
LOOPBACK_PORT = "5354"


@pytest.fixture(scope="module")
def world(
    prefix_factory: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    w = build_multicloud_world(
        prefix_factory(), colliding=True, workdir=tmp_path_factory.mktemp("names")
    )
    try:
        ns_run(w.host("a1").ns.name, str(BIN / "overlayctl"), "--etcd-endpoints",
               w.etcd_endpoint, "network", "init", "--network", "10.244.0.0/16",
               "--backend", "vxlan")  # fmt: skip
        yield w
    finally:
        destroy(w)


def netns_etc(ns: Namespace) -> Path:
    """``ip netns exec`` bind-mounts the files of this directory over ``/etc``'s."""
    return Path("/etc/netns") / ns.name


def daemon_flags(name: str, hosts_file: Path) -> tuple[str, ...]:
    flags = ["--dns-listen", "overlay", "--dns-listen", f"127.0.0.1:{LOOPBACK_PORT}"]
    for alias in ALIASES.get(name, ()):
        flags += ["--dns-name", alias]
    if name == "a2":
        flags += ["--hosts-file", str(hosts_file)]
    return tuple(flags)


@pytest.fixture(scope="module")
def daemons(world: World) -> Iterator[dict[str, OverlaydProc]]:
    a2 = world.host("a2").ns
    etc = netns_etc(a2)
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "hosts").write_text("127.0.0.1\tlocalhost\n")
    procs: dict[str, OverlaydProc] = {}
    try:
        for name in HOSTS:  # one after the other: a1's lease is older than b1's
            proc = OverlaydProc(world, world.host(name), daemon_flags(name, etc / "hosts"))
            procs[name] = proc.start()
            proc.wait_ready()
        yield procs
    finally:
        for proc in procs.values():
            proc.kill9()
        shutil.rmtree(etc, ignore_errors=True)


def dig(ns: str, server: str, name: str, *args: str, port: str = "53") -> str:
    """``dig +short``'s output, or ``status: X`` lines with ``+noall +comments``."""
    argv = [DIG, f"@{server}", "-p", port, "+time=1", "+tries=2", name, *args]
    return ns_run(ns, *argv, check=False, timeout=15).stdout


def short(d: OverlaydProc, name: str, rtype: str = "A") -> str:
    return dig(d.ns, str(d.overlay_ip()), name, rtype, "+short").strip()


def status(d: OverlaydProc, name: str, rtype: str = "A") -> str:
    out = dig(d.ns, str(d.overlay_ip()), name, rtype, "+noall", "+comments")
    return out.split("status: ", 1)[1].split(",", 1)[0] if "status: " in out else "no answer"


def answers(d: OverlaydProc, name: str, wanted: str) -> bool:
    return short(d, name) == wanted


def logged(d: OverlaydProc, text: str) -> bool:
    return text in d.log()


def test_every_host_resolves_every_node_site_name_and_alias(
    world: World, daemons: dict[str, OverlaydProc]
) -> None:
    for name, d in daemons.items():
        for peer, p in daemons.items():
            wanted = str(p.overlay_ip())
            wait_until(partial(answers, d, f"{peer}.{ZONE}", wanted), 10, f"{name} resolves {peer}")
            site = world.host(peer).site
            assert short(d, f"{peer}.{site}.{ZONE}") == wanted, (name, peer)
        assert short(d, f"peer0.org1.{ZONE}") == str(daemons["a1"].overlay_ip())
        assert short(d, f"peer1.org2.{ZONE}") == str(daemons["b1"].overlay_ip())
        # a1's lease is the older: it wins "shared"; b1 keeps its own name (checked above)
        assert short(d, f"shared.{ZONE}") == str(daemons["a1"].overlay_ip())
        # the optional loopback listener answers the same
        loop = dig(d.ns, "127.0.0.1", f"b1.{ZONE}", "+short", port=LOOPBACK_PORT).strip()
        assert loop == str(daemons["b1"].overlay_ip())


def test_both_claimants_of_an_alias_are_warned(daemons: dict[str, OverlaydProc]) -> None:
    for name in ("a1", "b1"):
        wait_until(partial(logged, daemons[name], f"shared.{ZONE} is claimed by"), 10,
                   f"{name} warns about the shared alias")  # fmt: skip
        line = next(ln for ln in daemons[name].log().splitlines() if "shared." in ln)
        assert "WARNING" in line.upper() and "served by 'a1'" in line


def test_ptr_soa_ns_and_other_zones_refused(daemons: dict[str, OverlaydProc]) -> None:
    a1, b1 = daemons["a1"], daemons["b1"]
    reverse = ".".join(reversed(str(b1.overlay_ip()).split("."))) + ".in-addr.arpa"
    assert short(a1, reverse, "PTR") == f"b1.{ZONE}."
    assert short(a1, ZONE, "NS") == f"a1.{ZONE}."
    assert short(a1, ZONE, "SOA").startswith(f"a1.{ZONE}. hostmaster.{ZONE}.")
    assert status(a1, f"nobody.{ZONE}") == "NXDOMAIN"
    assert status(a1, "example.com") == "REFUSED"
    assert status(a1, "1.1.168.192.in-addr.arpa", "PTR") == "REFUSED"


def inet(world: World) -> Namespace:
    return next(ns for ns in world.namespaces if ns.name == f"{world.prefix}inet")


def test_the_dns_port_is_not_reachable_from_the_internet(
    world: World, daemons: dict[str, OverlaydProc]
) -> None:
    attacker = inet(world)
    for name in ("bare", "b1"):  # bare: public address on its interface; b1: 1:1 NAT
        public = world.host(name).public
        assert public is not None
        assert ping(attacker, public, count=1).ok  # the address answers: not vacuous
        for extra in ((), ("+tcp",)):
            out = dig(attacker.name, str(public), f"{name}.{ZONE}", "+short", *extra)
            assert "10.244." not in out, (name, extra, out)
            assert "timed out" in out or "refused" in out, (name, extra, out)


def tcp_by_name(src: Namespace, dst: Namespace, name: str) -> int:
    """Bytes a receiver in ``dst`` got from a sender in ``src`` dialling ``name`` (resolved
    by the sender's own resolver: getaddrinfo, /etc/resolv.conf and /etc/hosts)."""
    recv = dst.popen(tool("traffic", "tcp-recv", "5300", "20"), stdout=subprocess.PIPE, text=True)
    try:
        assert recv.stdout is not None and recv.stdout.readline().strip() == "ready"
        sent = src.run(tool("traffic", "tcp-send", name, "5300", "65536", "20"), check=False)
        out = recv.communicate(timeout=25)[0]
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    assert sent.returncode == 0, sent.stderr
    return int(out.split()[0])


def test_a_tcp_client_reaches_b1_by_name_through_the_responder(
    world: World, daemons: dict[str, OverlaydProc]
) -> None:
    a1 = world.host("a1").ns
    etc = netns_etc(a1)
    etc.mkdir(parents=True, exist_ok=True)
    try:  # the host's resolver asks a1's own responder
        (etc / "resolv.conf").write_text(f"nameserver {daemons['a1'].overlay_ip()}\n")
        assert tcp_by_name(a1, world.host("b1").ns, f"b1.{ZONE}") == 65536
    finally:
        shutil.rmtree(etc, ignore_errors=True)


def test_a_tcp_client_reaches_b1_by_name_through_the_hosts_file(
    world: World, daemons: dict[str, OverlaydProc]
) -> None:
    hosts = netns_etc(world.host("a2").ns) / "hosts"
    wait_until(lambda: f"\tb1.{ZONE}" in hosts.read_text(), 10, "a2's hosts file names b1")
    text = hosts.read_text()
    assert text.startswith("127.0.0.1\tlocalhost\n# BEGIN overlayd overlay.internal\n")
    assert f"{daemons['b1'].overlay_ip()}\tb1.{ZONE}" in text
    assert tcp_by_name(world.host("a2").ns, world.host("b1").ns, f"b1.{ZONE}") == 65536


def test_a_joining_node_resolves_everywhere_and_a_revoked_one_is_gone(
    world: World, daemons: dict[str, OverlaydProc]
) -> None:
    b2 = OverlaydProc(world, world.host("b2"), ("--dns-listen", "overlay")).start()
    try:
        b2.wait_ready()
        wanted = str(b2.overlay_ip())
        for name, d in daemons.items():
            took = wait_until(partial(lambda d: short(d, f"b2.{ZONE}") == wanted, d), 10,
                              f"{name} resolves the new node b2")  # fmt: skip
            assert took < 10
        hosts = netns_etc(world.host("a2").ns) / "hosts"
        wait_until(lambda: f"\tb2.{ZONE}" in hosts.read_text(), 10, "a2's hosts file names b2")
    finally:
        b2.kill9()  # gone for good: it must not claim a lease again
    revoke = ns_run(b2.ns, str(BIN / "overlayctl"), "--etcd-endpoints", world.etcd_endpoint,
                    "leases", "revoke", "b2", check=False)  # fmt: skip
    assert revoke.returncode == 0, revoke.stderr
    for name, d in daemons.items():
        wait_until(partial(lambda d: status(d, f"b2.{ZONE}") == "NXDOMAIN", d), 10,
                   f"{name}: b2's name gone")  # fmt: skip
    hosts = netns_etc(world.host("a2").ns) / "hosts"
    wait_until(lambda: f"\tb2.{ZONE}" not in hosts.read_text(), 10, "b2 left a2's hosts file")


def test_overlayctl_names_lists_what_the_daemons_answer(
    world: World, daemons: dict[str, OverlaydProc]
) -> None:
    out = ns_run(daemons["a1"].ns, str(BIN / "overlayctl"), "--etcd-endpoints",
                 world.etcd_endpoint, "names", check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    for name, d in daemons.items():
        assert f"{name}.{ZONE}" in out.stdout and str(d.overlay_ip()) in out.stdout
    assert "warning: shared.overlay.internal is claimed by 'a1' and 'b1'" in out.stderr


def test_datagrams_that_are_not_dns_do_not_stop_it(daemons: dict[str, OverlaydProc]) -> None:
    a1 = daemons["a1"]
    target = str(a1.overlay_ip())
    flood = ns_run(a1.ns, *tool("traffic", "udp-send", target, "53", "2"), check=False)
    assert flood.returncode == 0, flood.stderr  # "hello" datagrams: not DNS at all
    assert short(a1, f"b1.{ZONE}") == str(daemons["b1"].overlay_ip())
    assert a1.proc is not None and a1.proc.poll() is None
    counted = a1.require_status()["dns"]  # the 5-byte datagrams were dropped, and counted
    assert counted["dropped"] >= 1 and counted["answered"] >= 1 and counted["names"] >= 8
