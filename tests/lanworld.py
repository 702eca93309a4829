"""A LAN of hosts in network namespaces with etcd, for the daemon's tests and the demo.

Layout (prefix P, all names start with it):
  P-sw    switch namespace with bridge br0 (LAN 192.168.77.0/24, gateway .1 on P-rt)
  P-etcd  etcd at 192.168.77.2:2379
  P-h1..  hosts at 192.168.77.11, .12, …
  P-rt    router: LAN side 192.168.77.1; with ``nat_host`` a second LAN 10.99.0.0/24
          holding P-nat (10.99.0.2) behind 1:1 NAT to 192.168.77.99, the address
          peers use (the host itself only has its private one: an elastic IP)
Everything is deleted by ``down()`` (also used at start to clear a crashed run).
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

LAN = "192.168.77"
NAT_PUBLIC = f"{LAN}.99"
NAT_PRIVATE = "10.99.0.2"


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=60)


def ns_list(prefix: str) -> list[str]:
    out = sh("ip", "netns", "list").stdout.split()
    return [n for n in out if n.startswith(f"{prefix}-")]


def down(prefix: str) -> None:
    """Kill every process in our namespaces and delete them."""
    for ns in ns_list(prefix):
        pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
        if pids:
            sh("kill", "-9", *pids, check=False)
    for ns in ns_list(prefix):
        sh("ip", "netns", "del", ns, check=False)


def _add_host(prefix: str, name: str, ns_addr: str, peer_ns: str, bridge: bool) -> None:
    ns = f"{prefix}-{name}"
    sh("ip", "netns", "add", ns)
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    veth = f"{prefix}{name}"[:15]
    sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
    sh("ip", "link", "set", veth, "netns", peer_ns)
    if bridge:
        sh("ip", "-n", peer_ns, "link", "set", veth, "master", "br0")
    sh("ip", "-n", peer_ns, "link", "set", veth, "up")
    sh("ip", "-n", ns, "addr", "add", ns_addr, "dev", "eth0")
    sh("ip", "-n", ns, "link", "set", "eth0", "up")


@dataclass
class LanWorld:
    prefix: str
    workdir: Path
    hosts: list[str] = field(default_factory=list)  # namespace names
    etcd_proc: subprocess.Popen[bytes] | None = None

    @property
    def etcd_endpoint(self) -> str:
        return f"{LAN}.2:2379"

    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def host_ip(self, name: str) -> str:
        return NAT_PRIVATE if name == "nat" else f"{LAN}.{10 + int(name[1:])}"

    def add_lan_host(self, name: str) -> str:
        _add_host(self.prefix, name, f"{self.host_ip(name)}/24", self.ns("sw"), bridge=True)
        sh("ip", "-n", self.ns(name), "route", "add", "default", "via", f"{LAN}.1")
        self.hosts.append(self.ns(name))
        return self.ns(name)

    def start_etcd(self) -> None:
        data = self.workdir / "etcd-data"
        log = open(self.workdir / "etcd.log", "ab")  # noqa: SIM115 - owned by the process
        self.etcd_proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.ns("etcd"),
                "etcd",
                "--data-dir",
                str(data),
                "--listen-client-urls",
                f"http://{self.etcd_endpoint}",
                "--advertise-client-urls",
                f"http://{self.etcd_endpoint}",
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            probe = sh(
                "ip",
                "netns",
                "exec",
                self.ns("etcd"),
                "etcdctl",
                "--endpoints",
                self.etcd_endpoint,
                "endpoint",
                "health",
                check=False,
            )
            if probe.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"etcd did not start: {(self.workdir / 'etcd.log').read_text()[-2000:]}")

    def stop_etcd(self) -> None:
        if self.etcd_proc is not None:
            self.etcd_proc.kill()
            self.etcd_proc.wait(10)
            self.etcd_proc = None

    def etcdctl(self, *args: str) -> str:
        return sh(
            "ip",
            "netns",
            "exec",
            self.ns("etcd"),
            "etcdctl",
            "--endpoints",
            self.etcd_endpoint,
            *args,
        ).stdout


def build(prefix: str, workdir: Path, n_hosts: int = 3, nat_host: bool = False) -> LanWorld:
    """Build the LAN (clearing leftovers of an earlier run with this prefix) and start etcd."""
    down(prefix)
    workdir.mkdir(parents=True, exist_ok=True)
    world = LanWorld(prefix, workdir)
    sw = world.ns("sw")
    sh("ip", "netns", "add", sw)
    sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", sw, "link", "set", "br0", "up")
    _add_host(prefix, "rt", f"{LAN}.1/24", sw, bridge=True)
    sh("ip", "netns", "exec", world.ns("rt"), "sysctl", "-qw", "net.ipv4.ip_forward=1")
    _add_host(prefix, "etcd", f"{LAN}.2/24", sw, bridge=True)
    for i in range(1, n_hosts + 1):
        world.add_lan_host(f"h{i}")
    if nat_host:
        rt = world.ns("rt")
        _add_host(prefix, "nat", f"{NAT_PRIVATE}/24", rt, bridge=False)
        veth = f"{prefix}nat"[:15]
        sh("ip", "-n", rt, "addr", "add", "10.99.0.1/24", "dev", veth)
        sh("ip", "-n", rt, "addr", "add", f"{NAT_PUBLIC}/32", "dev", "eth0")
        sh("ip", "-n", world.ns("nat"), "route", "add", "default", "via", "10.99.0.1")
        rules = f"""table ip lannat {{
  chain pre {{
    type nat hook prerouting priority dstnat; ip daddr {NAT_PUBLIC} dnat to {NAT_PRIVATE}
  }}
  chain post {{
    type nat hook postrouting priority srcnat; ip saddr {NAT_PRIVATE} snat to {NAT_PUBLIC}
  }}
}}
"""
        subprocess.run(
            ["ip", "netns", "exec", rt, "nft", "-f", "-"],
            input=rules,
            text=True,
            check=True,
            capture_output=True,
        )
        world.hosts.append(world.ns("nat"))
    world.start_etcd()
    return world
