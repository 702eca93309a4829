"""Whole test worlds in network namespaces, and the traffic helpers tests use on them.

Two topologies, each built under a caller-given namespace-name prefix ``P``:

``lan_world`` — one LAN (10.77.0.0/24) on bridge ``br0`` in switch namespace ``Psw``:
hosts ``Ph1``..``PhN`` at 10.77.0.11.. (default route via 10.77.0.1), etcd in ``Petcd`` at
10.77.0.2:2379. With ``nat_host=True`` a router ``Prtr`` (10.77.0.1) masquerades a second
LAN 10.78.0.0/24 holding host ``Pn1`` (10.78.0.10).

``multicloud_world`` — an internet namespace ``Pinet`` (bridge ``br0``; it routes between
192.0.2.0/24, 198.51.100.0/24 and 203.0.113.0/24 as .1 of each) connecting:

* cloud ``cloud-a``: router ``Prtr-a`` (public 198.51.100.2, LAN 10.0.1.1/24), hosts
  ``Pa1``..``Pa3`` at 10.0.1.11-13 with 1:1 public addresses 198.51.100.11-13 that exist only
  on the router (DNAT in, SNAT out, hairpin for the LAN unless ``hairpin=False``), or with
  ``nat_a="masquerade"`` (``"masquerade-random"``) no public address and outbound
  masquerade only (with random ports);
* cloud ``cloud-b``: router ``Prtr-b`` (public 203.0.113.2, LAN 10.0.2.1/24 or, when
  ``colliding``, 10.0.1.1/24), hosts ``Pb1``, ``Pb2`` at .11/.12 with public 203.0.113.21/22,
  or as cloud A by ``nat_b``;
* site ``bare``: host ``Pbare`` with 192.0.2.31 on its own interface (not with
  ``public_host=False``);
* etcd in ``Petcd`` at 192.0.2.10:2379;
* with ``metadata`` (site -> provider, e.g. ``{"cloud-a": "aws", "cloud-b": "gcp"}``), that
  provider's instance metadata API on the site's router, at the provider's well-known
  address on its LAN side (169.254.169.254 for aws/gcp/azure, 100.100.100.200 alibaba,
  169.254.0.23 tencent; port 80), reached by the hosts through their default route and
  answering each host its own public address (none for a masquerade-only host);
* with ``stun``, a STUN server (coturn ``turnserver --stun-only``) in ``Pinet`` at
  192.0.2.40:3478 (``World.stun_endpoint``), which sees each host as its router maps it.

Every host's underlay interface is ``eth0``. Interface names are generic because they live
inside the prefixed namespaces; nothing is created in the root namespace.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import socket
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from types import TracebackType
from typing import Literal

from tests.lab.etcd import EtcdServer
from tests.lab.netns import (
    REPO,
    Namespace,
    cleanup,
    create_namespace,
    delay_link,
    list_namespaces,
    tool,
    veth,
)
from tests.lab.services import (
    METADATA_ADDRESSES,
    STUN_PORT,
    MetadataService,
    start_metadata,
    start_stun,
)

NatMode = Literal["one-to-one", "masquerade", "masquerade-random"]
"""How a cloud's router maps its hosts: 1:1 (an elastic IP each), outbound masquerade
(port-preserving where the port is free, as Linux does), or masquerade with random ports
(a symmetric NAT: each destination sees another port; no hole punching through it)."""
NFT_TABLE = "lab"
"""The nftables table (family ``ip``) holding a router's NAT rules and hairpin counter."""


@dataclass(frozen=True)
class Host:
    """A machine that would run overlayd: one underlay interface with one address."""

    name: str
    ns: Namespace
    site: str
    address: IPv4Interface
    """Address on ``iface`` (private behind a router; public on a bare-metal host)."""
    gateway: IPv4Address
    public: IPv4Address | None
    """Where hosts outside the site reach it (None: unreachable from outside)."""
    iface: str = "eth0"

    @property
    def ip(self) -> IPv4Address:
        """The address on the host's interface."""
        return self.address.ip


@dataclass(frozen=True)
class Router:
    """A site's edge: NAT between its LAN (``lan0``) and the outside (``wan0``)."""

    name: str
    ns: Namespace
    site: str
    inside: IPv4Interface
    outside: IPv4Interface
    nat: NatMode
    hairpin: bool
    inside_if: str = "lan0"
    outside_if: str = "wan0"


@dataclass(frozen=True)
class World:
    """A built topology. ``destroy`` (or the ``*_world`` context managers) removes it."""

    kind: Literal["lan", "multicloud"]
    prefix: str
    workdir: Path
    namespaces: tuple[Namespace, ...]
    hosts: tuple[Host, ...]
    routers: tuple[Router, ...]
    etcd_ns: Namespace
    etcd: EtcdServer = field(compare=False)
    helpers: tuple[subprocess.Popen[str], ...] = field(default=(), compare=False)
    delay_ms: float = 0.0
    metadata: tuple[MetadataService, ...] = ()
    """The metadata APIs served (one per site that has one)."""
    stun_endpoint: str | None = None
    """``ip:port`` of the STUN server on the internet (None: the world has none)."""

    @property
    def etcd_endpoint(self) -> str:
        """``ip:port`` of etcd, reachable from every host."""
        return self.etcd.endpoint

    @property
    def sites(self) -> tuple[str, ...]:
        """Site names, in host order."""
        return tuple(dict.fromkeys(h.site for h in self.hosts))

    def host(self, name: str) -> Host:
        """The host called ``name`` (e.g. ``a1``)."""
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def site_hosts(self, site: str) -> tuple[Host, ...]:
        """The hosts of ``site``."""
        return tuple(h for h in self.hosts if h.site == site)

    def router(self, site: str) -> Router:
        """The router of ``site``."""
        for r in self.routers:
            if r.site == site:
                return r
        raise KeyError(site)

    def overlayd_argv(self, host: Host, *extra: str, public_ip: bool = True) -> list[str]:
        """Command line running overlayd on ``host``: its own state dir, subnet file, site
        and (if it has one that is not on its interface, and ``public_ip``) public address."""
        home = self.workdir / "overlayd" / host.name
        argv = [
            *host.ns.argv([str(REPO / ".venv" / "bin" / "overlayd")]),
            "--etcd-endpoints", self.etcd_endpoint,
            "--node-name", host.name,
            "--site", host.site,
            "--state-dir", str(home / "state"),
            "--subnet-file", str(home / "subnet.env"),
            "--names-socket", str(home / "names.sock"),
        ]  # fmt: skip
        if public_ip and host.public is not None and host.public != host.ip:
            argv += ["--public-ip", str(host.public)]
        return [*argv, *extra]

    def describe(self) -> str:
        """Human-readable topology: sites, hosts, addresses, routers, etcd."""
        lines = [f"{self.kind} world, prefix {self.prefix!r}, workdir {self.workdir}"]
        if self.delay_ms:
            lines.append(f"  each site's internet link delays frames by {self.delay_ms} ms")
        for site in self.sites:
            lines.append(f"site {site}:")
            with contextlib.suppress(KeyError):
                r = self.router(site)
                nat = r.nat + ("" if r.hairpin or r.nat != "one-to-one" else ", no hairpin")
                lines.append(
                    f"  router {r.ns.name}: {r.inside_if} {r.inside}  {r.outside_if} "
                    f"{r.outside}  ({nat})"
                )
            for h in self.site_hosts(site):
                public = "-" if h.public is None else str(h.public)
                lines.append(
                    f"  host {h.name:5} ns {h.ns.name}: {h.iface} {h.address} "
                    f"via {h.gateway}  public {public}"
                )
        lines.append(f"etcd: {self.etcd_endpoint} in {self.etcd_ns.name}")
        lines.append(f"  log {self.etcd.log_file}")
        for m in self.metadata:
            lines.append(
                f"metadata ({m.provider}) of {m.site}: http://{m.address}:{m.port} in {m.ns.name}"
            )
        if self.stun_endpoint is not None:
            lines.append(f"stun: {self.stun_endpoint} (coturn) in {self.prefix}inet")
        return "\n".join(lines)


class _Builder:
    """Creates namespaces and processes for one world and can undo all of it."""

    def __init__(self, prefix: str, workdir: Path | None) -> None:
        if not prefix:
            raise ValueError("a world needs a non-empty prefix")
        if existing := list_namespaces(prefix):
            raise RuntimeError(f"namespaces with prefix {prefix!r} exist: {existing}")
        self.prefix = prefix
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"{prefix}world-"))
        self.namespaces: list[Namespace] = []
        self.helpers: list[subprocess.Popen[str]] = []
        self.etcd: EtcdServer | None = None

    def ns(self, role: str, *, router: bool = False) -> Namespace:
        """Create ``<prefix><role>``; routers forward and send no ICMP redirects."""
        ns = create_namespace(self.prefix + role)
        self.namespaces.append(ns)
        if router:
            ns.set_forwarding()
            ns.set_rp_filter(0)
            for scope in ("all", "default"):
                ns.sysctl(f"net.ipv4.conf.{scope}.send_redirects", 0)
        return ns

    def link(self, a: Namespace, a_if: str, b: Namespace, b_if: str, delay_ms: float) -> None:
        if delay_ms:
            self.helpers.append(delay_link(a, a_if, b, b_if, delay_ms))
        else:
            veth(a, a_if, b, b_if)

    def host(
        self,
        name: str,
        site: str,
        address: IPv4Interface,
        gateway: IPv4Address,
        public: IPv4Address | None,
        switch: Namespace,
        bridge: str,
        *,
        delay_ms: float = 0.0,
    ) -> Host:
        """A host namespace whose ``eth0`` is port ``name`` of ``bridge`` in ``switch``."""
        ns = self.ns(name)
        self.link(ns, "eth0", switch, name, delay_ms)
        switch.attach(name, bridge)
        ns.add_address("eth0", address)
        ns.add_route(None, gateway)
        return Host(name, ns, site, address, gateway, public)

    def start_etcd(self, ns: Namespace, address: IPv4Address) -> EtcdServer:
        self.etcd = EtcdServer(self.workdir / "etcd", namespace=ns, host=address)
        self.etcd.start()
        return self.etcd

    def world(
        self,
        kind: Literal["lan", "multicloud"],
        hosts: Sequence[Host],
        routers: Sequence[Router],
        etcd_ns: Namespace,
        delay_ms: float = 0.0,
        metadata: Sequence[MetadataService] = (),
        stun_endpoint: str | None = None,
    ) -> World:
        assert self.etcd is not None
        self.etcd.wait_healthy()
        return World(
            kind, self.prefix, self.workdir, tuple(self.namespaces), tuple(hosts),
            tuple(routers), etcd_ns, self.etcd, tuple(self.helpers), delay_ms,
            tuple(metadata), stun_endpoint,
        )  # fmt: skip

    def metadata(self, router: Router, provider: str, hosts: Sequence[Host]) -> MetadataService:
        """``provider``'s metadata API on ``router``'s LAN side, answering each of ``hosts``
        its public address."""
        if provider not in METADATA_ADDRESSES:
            raise ValueError(f"no metadata provider {provider!r}: {sorted(METADATA_ADDRESSES)}")
        service = MetadataService(router.site, provider, router.ns, METADATA_ADDRESSES[provider])
        router.ns.add_address(router.inside_if, IPv4Interface(f"{service.address}/32"))
        answers = {h.ip: h.public for h in hosts if h.public is not None}
        log_file = self.workdir / f"metadata-{router.site}.log"
        self.helpers.append(start_metadata(service, answers, log_file))
        return service

    def stun(self, ns: Namespace, iface: str, address: IPv4Address) -> str:
        """A STUN server at ``address`` (added to ``iface`` of ``ns``); its endpoint."""
        ns.add_address(iface, IPv4Interface(f"{address}/32"))
        self.helpers.append(start_stun(ns, address, self.workdir / "stun"))
        return f"{address}:{STUN_PORT}"

    def abort(self) -> None:
        _teardown(self.prefix, self.etcd, self.helpers)
        if self.etcd is not None:
            shutil.rmtree(self.etcd.data_dir, ignore_errors=True)


def _teardown(
    prefix: str, etcd: EtcdServer | None, helpers: Sequence[subprocess.Popen[str]]
) -> None:
    if etcd is not None:
        etcd.stop()
    for proc in helpers:
        proc.terminate()
    for proc in helpers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=5)
    cleanup(prefix)


def destroy(world: World, *, remove_workdir: bool = False) -> None:
    """Stop the world's etcd and helpers and delete all its namespaces (and leftovers).

    etcd's data directory (tens of MB of preallocated WAL) goes too; its log stays in
    ``workdir`` unless ``remove_workdir``.
    """
    _teardown(world.prefix, world.etcd, world.helpers)
    shutil.rmtree(world.workdir if remove_workdir else world.etcd.data_dir, ignore_errors=True)
    remove_dead_wireguard_sockets()


WIREGUARD_SOCKETS = Path("/var/run/wireguard")


def remove_dead_wireguard_sockets() -> list[Path]:
    """Delete overlayd's wireguard-go UAPI sockets that nothing serves any more.

    A wireguard-go killed with SIGKILL (a test killing a host) leaves its socket behind.
    Only sockets that refuse connections go: another run's live devices stay.
    """
    removed = []
    for path in sorted(WIREGUARD_SOCKETS.glob("ovwg*.sock")):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except ConnectionRefusedError:
                path.unlink(missing_ok=True)
                removed.append(path)
            except OSError:
                continue
    return removed


def remasquerade(world: World, site: str, *, random_ports: bool) -> None:
    """Switch ``site``'s masquerading router to random ports (a symmetric NAT) or back to
    port-preserving masquerade, and forget its mappings (``conntrack -F``), as a NAT that
    was replaced would."""
    router = world.router(site)
    if router.nat == "one-to-one":
        raise ValueError(f"{site}'s router is a 1:1 NAT, not a masquerade")
    lan = world.site_hosts(site)[0].address.network
    flags = " random" if random_ports else ""
    router.ns.sh(
        f"nft flush chain ip {NFT_TABLE} nat_post && "
        f"nft add rule ip {NFT_TABLE} nat_post oifname {router.outside_if} "
        f"ip saddr {lan} masquerade{flags} && conntrack -F"
    )


def _nat_rules(router: Router, lan: IPv4Network, hosts: Sequence[Host]) -> str:
    """nftables table ``lab`` for ``router``: NAT, an inbound guard and the hairpin counter.

    The counter counts every packet that enters from the LAN addressed to one of the
    site's public host addresses: in-site traffic that went through the NAT. Without
    hairpin such packets are dropped after being counted.
    """
    lan_if, wan_if = router.inside_if, router.outside_if
    pairs = [(h.ip, h.public) for h in hosts if h.public is not None]
    public = ", ".join(str(p) for _, p in pairs)
    dnat = ", ".join(f"{p} : {ip}" for ip, p in pairs)
    snat = ", ".join(f"{ip} : {p}" for ip, p in pairs)
    if router.nat == "one-to-one":
        pre = f"dnat to ip daddr map {{ {dnat} }}"
        post = f"""oifname "{wan_if}" snat to ip saddr map {{ {snat} }}
            oifname "{lan_if}" ct status dnat snat to ip saddr map {{ {snat} }}"""
    else:
        pre = ""
        flags = " random" if router.nat == "masquerade-random" else ""
        post = f'oifname "{wan_if}" ip saddr {lan} masquerade{flags}'
    elements = f"elements = {{ {public} }}" if public else ""
    verdict = "" if router.hairpin else "drop"
    return textwrap.dedent(
        f"""
        table ip {NFT_TABLE} {{
          set public {{ type ipv4_addr; {elements} }}
          counter hairpin {{ }}
          chain count_pre {{
            type filter hook prerouting priority mangle;
            iifname "{lan_if}" ip daddr @public counter name hairpin {verdict}
          }}
          chain nat_pre {{
            type nat hook prerouting priority dstnat;
            {pre}
          }}
          chain nat_post {{
            type nat hook postrouting priority srcnat;
            {post}
          }}
          chain guard {{
            type filter hook forward priority filter;
            iifname "{wan_if}" ct state new ct status dnat accept
            iifname "{wan_if}" ct state new drop
          }}
        }}
        """
    )


def build_lan_world(
    prefix: str, n_hosts: int = 3, *, nat_host: bool = False, workdir: Path | None = None
) -> World:
    """Build the LAN world (see the module docstring); ``destroy`` removes it."""
    b = _Builder(prefix, workdir)
    try:
        lan = IPv4Network("10.77.0.0/24")
        gateway = lan[1]
        sw = b.ns("sw")
        sw.add_bridge("br0")
        hosts = [
            b.host(f"h{i}", "lan", IPv4Interface(f"{lan[10 + i]}/24"), gateway, None, sw, "br0")
            for i in range(1, n_hosts + 1)
        ]
        etcd_ns = b.ns("etcd")
        veth(etcd_ns, "eth0", sw, "etcd")
        sw.attach("etcd", "br0")
        etcd_ns.add_address("eth0", IPv4Interface(f"{lan[2]}/24"))
        etcd_ns.add_route(None, gateway)
        b.start_etcd(etcd_ns, lan[2])
        routers = []
        if nat_host:
            inner = IPv4Network("10.78.0.0/24")
            router = Router(
                "rtr", b.ns("rtr", router=True), "lan-nat", IPv4Interface(f"{inner[1]}/24"),
                IPv4Interface(f"{gateway}/24"), "masquerade", hairpin=True,
            )  # fmt: skip
            veth(router.ns, router.outside_if, sw, "rtr")
            sw.attach("rtr", "br0")
            router.ns.add_address(router.outside_if, router.outside)
            router.ns.add_bridge(router.inside_if)
            router.ns.add_address(router.inside_if, router.inside)
            host = b.host(
                "n1", "lan-nat", IPv4Interface(f"{inner[10]}/24"), inner[1], None,
                router.ns, router.inside_if,
            )  # fmt: skip
            router.ns.nft(_nat_rules(router, inner, [host]))
            hosts.append(host)
            routers.append(router)
        return b.world("lan", hosts, routers, etcd_ns)
    except BaseException:
        b.abort()
        raise


def build_multicloud_world(
    prefix: str,
    *,
    colliding: bool = False,
    hairpin: bool = True,
    nat_a: NatMode = "one-to-one",
    nat_b: NatMode = "one-to-one",
    public_host: bool = True,
    delay_ms: float = 0.0,
    metadata: Mapping[str, str] | None = None,
    stun: bool = False,
    workdir: Path | None = None,
    more_public: int = 0,
) -> World:
    """Build the multi-cloud world (see the module docstring); ``destroy`` removes it.

    ``nat_a`` / ``nat_b``: how cloud A's / cloud B's router maps its hosts (``NatMode``);
    ``public_host=False`` leaves out the bare host, so no overlay host has a public
    address on its interface (etcd stays on the internet). ``metadata``: site -> provider
    (``services.METADATA_ADDRESSES``) whose metadata API that site's router serves;
    ``stun``: run a STUN server on the internet (``World.stun_endpoint``). ``more_public``:
    that many more hosts like the bare one (``Pbare2``.. at 192.0.2.32.., site ``bare``).

    ``delay_ms``: every frame crossing a site's link to the internet (cloud A's, cloud B's,
    the bare host's; not etcd's) waits this long, so a cross-site round trip gains
    4 x ``delay_ms`` and an in-site one nothing.
    """
    metadata = dict(metadata or {})
    if unknown := sorted(set(metadata) - {"cloud-a", "cloud-b"}):
        raise ValueError(f"metadata for sites the world does not have: {unknown}")
    b = _Builder(prefix, workdir)
    try:
        inet = b.ns("inet", router=True)
        inet.add_bridge("br0")
        nets = {n: IPv4Network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")}
        for net in nets.values():
            inet.add_address("br0", IPv4Interface(f"{net[1]}/24"))
        core = nets["192.0.2.0/24"]

        etcd_ns = b.ns("etcd")
        veth(etcd_ns, "eth0", inet, "etcd")
        inet.attach("etcd", "br0")
        etcd_ns.add_address("eth0", IPv4Interface(f"{core[10]}/24"))
        etcd_ns.add_route(None, core[1])
        b.start_etcd(etcd_ns, core[10])

        hosts: list[Host] = []
        routers: list[Router] = []
        services: list[MetadataService] = []
        lan_b = "10.0.1.0/24" if colliding else "10.0.2.0/24"
        clouds: list[tuple[str, str, str, IPv4Network, int, int, NatMode]] = [
            ("cloud-a", "a", "10.0.1.0/24", nets["198.51.100.0/24"], 3, 11, nat_a),
            ("cloud-b", "b", lan_b, nets["203.0.113.0/24"], 2, 21, nat_b),
        ]
        for site, tag, lan_s, wan, count, first_public, mode in clouds:
            lan = IPv4Network(lan_s)
            router = Router(
                f"rtr-{tag}", b.ns(f"rtr-{tag}", router=True), site,
                IPv4Interface(f"{lan[1]}/24"), IPv4Interface(f"{wan[2]}/24"), mode, hairpin,
            )  # fmt: skip
            rns = router.ns
            b.link(rns, router.outside_if, inet, tag, delay_ms)
            inet.attach(tag, "br0")
            rns.add_address(router.outside_if, router.outside)
            rns.add_route(None, wan[1])
            rns.add_bridge(router.inside_if)
            rns.add_address(router.inside_if, router.inside)
            site_hosts = []
            for i in range(1, count + 1):
                public = wan[first_public + i - 1] if mode == "one-to-one" else None
                address = IPv4Interface(f"{lan[10 + i]}/24")
                host = b.host(f"{tag}{i}", site, address, lan[1], public, rns, router.inside_if)
                site_hosts.append(host)
                if public is not None:
                    rns.add_address(router.outside_if, IPv4Interface(f"{public}/24"))
            rns.nft(_nat_rules(router, lan, site_hosts))
            if site in metadata:
                services.append(b.metadata(router, metadata[site], site_hosts))
            hosts += site_hosts
            routers.append(router)
        stun_endpoint = b.stun(inet, "br0", core[40]) if stun else None

        for i in range(0 if public_host else 1, 1 + more_public):
            bare_ip, name = IPv4Interface(f"{core[31 + i]}/24"), f"bare{i + 1}" if i else "bare"
            hosts.append(
                b.host(name, "bare", bare_ip, core[1], bare_ip.ip, inet, "br0", delay_ms=delay_ms)
            )
        return b.world("multicloud", hosts, routers, etcd_ns, delay_ms, services, stun_endpoint)
    except BaseException:
        b.abort()
        raise


@contextlib.contextmanager
def lan_world(
    prefix: str, n_hosts: int = 3, *, nat_host: bool = False, workdir: Path | None = None
) -> Iterator[World]:
    """``build_lan_world`` for the duration of a ``with`` block, destroyed even on failure."""
    world = build_lan_world(prefix, n_hosts, nat_host=nat_host, workdir=workdir)
    try:
        yield world
    finally:
        destroy(world)


@contextlib.contextmanager
def multicloud_world(
    prefix: str,
    *,
    colliding: bool = False,
    hairpin: bool = True,
    nat_a: NatMode = "one-to-one",
    nat_b: NatMode = "one-to-one",
    public_host: bool = True,
    delay_ms: float = 0.0,
    metadata: Mapping[str, str] | None = None,
    stun: bool = False,
    workdir: Path | None = None,
    more_public: int = 0,
) -> Iterator[World]:
    """``build_multicloud_world`` for a ``with`` block, destroyed even on failure."""
    world = build_multicloud_world(
        prefix, colliding=colliding, hairpin=hairpin, nat_a=nat_a, nat_b=nat_b,
        public_host=public_host, delay_ms=delay_ms, metadata=metadata, stun=stun,
        workdir=workdir, more_public=more_public,
    )  # fmt: skip
    try:
        yield world
    finally:
        destroy(world)


# --- traffic helpers ---


@dataclass(frozen=True)
class PingResult:
    """Summary of one ``ping`` run."""

    transmitted: int
    received: int
    avg_ms: float | None

    @property
    def ok(self) -> bool:
        """Every echo request was answered."""
        return self.transmitted > 0 and self.received == self.transmitted


def ping(src: Namespace, dst: IPv4Address, count: int = 1, timeout: float = 2.0) -> PingResult:
    """Ping ``dst`` from inside ``src``: ``count`` requests 0.1 s apart, at most ``timeout`` s
    to wait for all replies."""
    argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.1", "-W", str(timeout), str(dst)]
    out = src.run(argv, check=False, timeout=timeout + 0.1 * count + 10).stdout
    transmitted = received = 0
    avg: float | None = None
    for line in out.splitlines():
        if "packets transmitted" in line:
            parts = line.split()
            transmitted, received = int(parts[0]), int(parts[3])
        elif line.startswith(("rtt", "round-trip")):
            avg = float(line.split("=")[1].split("/")[1])
    return PingResult(transmitted, received, avg)


@dataclass(frozen=True)
class Transfer:
    """What the receiving side of ``tcp_transfer`` saw."""

    nbytes: int
    seconds: float
    peer: IPv4Address
    """Source address of the connection as seen by the receiver (after any NAT)."""

    @property
    def mbit_per_s(self) -> float:
        """Throughput in Mbit/s."""
        return self.nbytes * 8 / self.seconds / 1e6


class TransferError(AssertionError):
    """A ``tcp_transfer`` did not deliver every byte."""


def tcp_transfer(
    src: Namespace,
    dst: Namespace,
    dst_ip: IPv4Address,
    nbytes: int = 50 * 2**20,
    *,
    port: int = 5201,
    timeout: float = 60.0,
) -> Transfer:
    """Send ``nbytes`` over TCP from ``src`` to a receiver in ``dst`` listening on all
    addresses, dialled at ``dst_ip``; raise ``TransferError`` unless all of it arrived."""
    recv = dst.popen(
        tool("traffic", "tcp-recv", str(port), str(timeout)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert recv.stdout is not None
        if recv.stdout.readline().strip() != "ready":
            raise TransferError(f"receiver in {dst.name} did not start: {recv.communicate()[1]}")
        send = src.run(
            tool("traffic", "tcp-send", str(dst_ip), str(port), str(nbytes), str(timeout)),
            check=False,
            timeout=timeout + 5,
        )
        out, err = recv.communicate(timeout=timeout + 5)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    if send.returncode != 0 or not out.strip():
        raise TransferError(f"transfer {src.name} -> {dst_ip} failed: {send.stderr}{err}")
    got, seconds, peer = out.split()
    if int(got) != nbytes:
        raise TransferError(f"{dst.name} received {got} of {nbytes} bytes")
    return Transfer(int(got), max(float(seconds), 1e-6), IPv4Address(peer))


def udp_source(
    src: Namespace, dst: Namespace, dst_ip: IPv4Address, *, port: int = 5300, timeout: float = 2.0
) -> IPv4Address | None:
    """Send UDP datagrams from ``src`` to ``dst_ip``; return the source address that a
    receiver in ``dst`` (bound to all addresses) saw, or None if nothing arrived."""
    seen = udp_endpoint(src, dst, dst_ip, port=port, timeout=timeout)
    return None if seen is None else seen[0]


def udp_endpoint(
    src: Namespace,
    dst: Namespace,
    dst_ip: IPv4Address,
    *,
    port: int = 5300,
    source_port: int = 0,
    timeout: float = 2.0,
) -> tuple[IPv4Address, int] | None:
    """Like ``udp_source``, sending from ``source_port`` (0: any); returns the source
    address and port the receiver saw (what a NAT on the way mapped them to)."""
    recv = dst.popen(
        tool("traffic", "udp-recv", str(port), str(timeout)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    send: subprocess.Popen[bytes] | None = None
    try:
        assert recv.stdout is not None
        if recv.stdout.readline().strip() != "ready":
            raise RuntimeError(f"UDP receiver in {dst.name} did not start")
        argv = tool("traffic", "udp-send", str(dst_ip), str(port), str(timeout), str(source_port))
        send = src.popen(argv)
        out, _ = recv.communicate(timeout=timeout + 5)
    finally:
        for proc in (recv, send):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    seen = out.split()
    return None if len(seen) != 2 else (IPv4Address(seen[0]), int(seen[1]))


def counter_packets(ns: Namespace, table: str, name: str, family: str = "ip") -> int:
    """Packets counted so far by the named nftables counter ``name`` of ``family table``."""
    out = ns.run(["nft", "-j", "list", "counter", family, table, name]).stdout
    for item in json.loads(out)["nftables"]:
        if "counter" in item:
            packets: int = item["counter"]["packets"]
            return packets
    raise RuntimeError(f"no counter {family} {table} {name} in {ns.name}")


def hairpin_packets(router: Router) -> int:
    """Packets that entered ``router`` from its LAN addressed to a public address of its
    own site (in-site traffic that went through the NAT instead of staying on the LAN)."""
    return counter_packets(router.ns, NFT_TABLE, "hairpin")


_blocks = itertools.count(1)


class PathBlock:
    """Drops every packet from or to one address inside one namespace until ``restore``.

    Works on forwarded traffic in routers too: it matches before DNAT and after SNAT.
    Also a context manager that restores on exit.
    """

    def __init__(self, ns: Namespace, addr: IPv4Address) -> None:
        self.ns = ns
        self.addr = addr
        self.table = f"lab_block_{next(_blocks)}"
        match = f"ip saddr {addr} drop\n ip daddr {addr} drop"
        ns.nft(
            f"""
            table ip {self.table} {{
              chain pre {{ type filter hook prerouting priority raw; {match}; }}
              chain out {{ type filter hook output priority raw; {match}; }}
              chain post {{ type filter hook postrouting priority 300; {match}; }}
            }}
            """
        )
        self.active = True

    def restore(self) -> None:
        """Remove the rules (idempotent)."""
        if self.active:
            self.ns.run(["nft", "delete", "table", "ip", self.table], check=False)
            self.active = False

    def __enter__(self) -> PathBlock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore()


def drop_between(ns: Namespace, addr: IPv4Address) -> PathBlock:
    """Break every path through ``ns`` from or to ``addr`` (nftables drop rules);
    ``.restore()`` the returned block, or use it as a context manager."""
    return PathBlock(ns, addr)
