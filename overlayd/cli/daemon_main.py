"""``overlayd``: the daemon's command line and composition root.

Every flag is also ``OVERLAYD_<FLAG>``. ``run_daemon`` is the one place that builds the
real collaborators (etcd store, node key, path keeper, data plane) and hands them to
``overlayd.agent.daemon.Daemon``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import socket
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import click
from prometheus_client import CollectorRegistry

from overlayd.agent.daemon import Daemon
from overlayd.agent.discovery import AddressDiscovery
from overlayd.agent.metrics import Metrics, probe_families, store_families
from overlayd.agent.options import NAMES_SOCKET, DaemonOptions
from overlayd.agent.path_keeper import PathKeeper
from overlayd.agent.punching import Punching
from overlayd.agent.status_listen import DEFAULT_LISTEN, parse_listen
from overlayd.cli.common import etcd_options, etcd_settings, friendly_errors
from overlayd.dataplane.api import DataPlane
from overlayd.discovery.metadata import MODES, CloudMetadata, parse_mode
from overlayd.discovery.stun import StunServer, parse_server
from overlayd.disk.node_key import NodeKey
from overlayd.disk.state_dir import StateDir
from overlayd.planning.punch import PunchParams
from overlayd.probe.opener import open_raw
from overlayd.probe.settings import ProbeConfig
from overlayd.probe.wire import DEFAULT_PORT as DEFAULT_PROBE_PORT
from overlayd.runtime.logs import setup_logging
from overlayd.runtime.phases import Phase, PhaseClock, process_age
from overlayd.store.etcd import EtcdStore
from overlayd.values.lease import DEFAULT_SITE
from overlayd.values.lease_rules import (
    default_node_name,
    own_addresses,
    own_dns_names,
    own_label,
)
from overlayd.values.names import parse_dns_listen

M_ARENA_MAX = -8  # glibc mallopt parameter
log = logging.getLogger("overlayd")


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc malloc arenas before grpc starts its threads.

    Each thread that allocates may get its own arena; with grpc's threads that cost
    ~5 MB of RSS at 5,000 peers (measured with scripts/bench: 83.7 MB -> 79 MB).
    """
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, arenas)


def _punching() -> Punching:
    """Hole punching with low-TTL openers from a raw socket (docs/nat.md)."""
    params = PunchParams()
    opener = open_raw(params.ttl)
    if isinstance(opener, str):
        logging.getLogger("overlayd").warning(
            "%s: hole punching works only through NATs that let the first datagram in", opener
        )
        return Punching(params, None, time.monotonic)
    return Punching(params, opener, time.monotonic)


async def _compose_and_run(opts: DaemonOptions, dataplane: DataPlane, phases: PhaseClock) -> None:
    """The composition root: the real store, node key and path keeper, given to ``Daemon``;
    one metrics registry for all of them (``/metrics``, docs/metrics.md)."""
    metrics = Metrics(CollectorRegistry())
    store = EtcdStore(opts.etcd)
    metrics.scrape(lambda: store_families(store.counters))
    try:
        await store.connect()  # first: bad TLS files end the daemon before side effects
        phases.reach(Phase.STORE)
        key = NodeKey.load_or_create(opts.state_dir)
        paths = PathKeeper(
            key, ProbeConfig(port=opts.probe_port), punching=_punching(), metrics=metrics
        )
        metrics.scrape(lambda: probe_families(paths.prober.counters))
        discovery = None
        if opts.public_ip_auto:  # --public-ip given: nothing to discover
            metadata = CloudMetadata(opts.cloud_metadata) if opts.cloud_metadata else None
            discovery = AddressDiscovery(metadata, opts.stun_servers)
        daemon = Daemon(
            opts, store, dataplane, StateDir(opts.state_dir), key, paths, discovery=discovery,
            phases=phases, metrics=metrics,
        )  # fmt: skip
        await daemon.run()
    finally:
        await store.close()
        dataplane.close()


def run_daemon(opts: DaemonOptions, dataplane: DataPlane, phases: PhaseClock) -> None:
    """Run until SIGTERM/SIGINT with the real collaborators; uvloop when available.
    ``phases``: the start-up phase clock, begun when the process started."""
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    runner(_compose_and_run(opts, dataplane, phases))


@click.command(context_settings={"auto_envvar_prefix": "OVERLAYD", "show_default": True})
@etcd_options
@click.option(
    "--node-name",
    default=None,
    help="This node's name, a DNS label (default: the host name's first label).",
)
@click.option(
    "--iface",
    default=None,
    help="Underlay interface name or address (default: default-route interface).",
)
@click.option(
    "--public-ip",
    "public_ips",
    multiple=True,
    help="A public address of this node, even if not on any interface; repeatable. "
    "'auto' (the default when none is given): publish the addresses peers in other "
    "sites see this node at, once confirmed.",
)
@click.option(
    "--cloud-metadata",
    type=click.Choice(MODES),
    default="auto",
    help="Ask this cloud's metadata service for this node's public address (with --public-ip "
    "auto; 'auto': every provider's, in parallel, for at most a quarter of a second).",
)
@click.option(
    "--stun-server",
    "stun_servers",
    multiple=True,
    callback=lambda _ctx, _param, values: tuple(parse_server(v) for v in values),
    help="HOST[:PORT] of a STUN server to learn this node's public address and probe port "
    "mapping from (with --public-ip auto); repeatable.",
)
@click.option("--site", default=DEFAULT_SITE, help="Site (cloud/LAN) this node is in.")
@click.option(
    "--subnet-file", type=click.Path(path_type=Path), default=Path("/run/overlayd/subnet.env")
)
@click.option("--state-dir", type=click.Path(path_type=Path), default=Path("/var/lib/overlayd"))
@click.option(
    "--healthz-port",
    type=click.IntRange(0, 65535),
    default=10256,
    help="Port of /healthz, /readyz and /status (0: off).",
)
@click.option(
    "--healthz-ip",
    multiple=True,
    default=DEFAULT_LISTEN,
    help="Address the health port listens on; repeatable. 'overlay': this node's overlay "
    "address, once leased. Anything but loopback exposes /status to that network.",
)
@click.option(
    "--ip-masq/--no-ip-masq",
    default=False,
    help="Masquerade traffic leaving the overlay (nftables table 'ip overlayd').",
)
@click.option(
    "--probe-port",
    type=click.IntRange(1, 65535),
    default=DEFAULT_PROBE_PORT,
    help="UDP port of the authenticated path probes.",
)
@click.option(
    "--gateway-candidate/--no-gateway-candidate",
    default=True,
    help="May this node be elected its site's gateway (gateway topology).",
)
@click.option(
    "--relay/--no-relay",
    default=None,
    help="Forward WireGuard traffic between peers that cannot reach each other (default: "
    "when this node has a public address on its interface or from --public-ip).",
)
@click.option(
    "--dns-name",
    "dns_names",
    multiple=True,
    help="An alias of this node in the network's DNS zone (e.g. peer0.org1); repeatable.",
)
@click.option(
    "--dns-listen",
    multiple=True,
    default=("overlay",),
    help="Where the DNS responder listens: 'overlay[:PORT]' (this node's overlay address, "
    "port 53 by default), 'IP[:PORT]' (e.g. 127.0.0.1:5354) or 'off'; repeatable.",
)
@click.option(
    "--hosts-file",
    type=click.Path(path_type=Path),
    default=None,
    help="Keep the zone's names in a marked block of this hosts file (e.g. /etc/hosts), "
    "rewritten atomically when names change ('overlayctl names cleanup' removes it).",
)
@click.option(
    "--names-socket",
    type=click.Path(path_type=Path),
    default=NAMES_SOCKET,
    help="Unix socket the CNI plugin registers container names on ('' : off).",
)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text")
@click.option(
    "--lease-ttl",
    type=click.IntRange(5, 7 * 86400),
    default=86400,
    help="Subnet lease TTL in seconds (renewed every third of it, at least hourly).",
)
@click.option(
    "--resync-interval",
    type=click.FloatRange(1, 3600),
    default=30.0,
    help="Seconds between full read-backs of the kernel state.",
)
@click.option("--debug", is_flag=True, help="Debug logging; tracebacks on errors.")
@friendly_errors
def main(
    etcd_endpoints: str,
    etcd_prefix: str,
    etcd_cafile: Path | None,
    etcd_certfile: Path | None,
    etcd_keyfile: Path | None,
    node_name: str | None,
    iface: str | None,
    public_ips: tuple[str, ...],
    cloud_metadata: str,
    stun_servers: tuple[StunServer, ...],
    site: str,
    subnet_file: Path,
    state_dir: Path,
    healthz_port: int,
    healthz_ip: tuple[str, ...],
    ip_masq: bool,
    log_format: str,
    lease_ttl: int,
    resync_interval: float,
    probe_port: int,
    gateway_candidate: bool,
    relay: bool | None,
    dns_names: tuple[str, ...],
    dns_listen: tuple[str, ...],
    hosts_file: Path | None,
    names_socket: Path,
    debug: bool,
) -> None:
    """Run the overlay network daemon on this host."""
    phases = PhaseClock(log, age=process_age())  # first: the imports count from exec
    limit_malloc_arenas()
    setup_logging(log_format, logging.DEBUG if debug else logging.INFO)
    phases.reach(Phase.IMPORTS)
    try:
        publics = tuple(IPv4Address(p) for p in public_ips if p != "auto")
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--public-ip") from None
    auto = not publics or "auto" in public_ips
    # the rules peers judge our lease by (overlayd/values/lease_rules.py): refuse now, exit code 2
    node_name = (
        own_label(node_name, "--node-name")
        if node_name is not None
        else default_node_name(socket.gethostname())
    )
    site = own_label(site, "--site")
    publics = own_addresses(publics, "--public-ip")
    opts = DaemonOptions(
        etcd=etcd_settings(etcd_endpoints, etcd_prefix, etcd_cafile, etcd_certfile, etcd_keyfile),
        node_name=node_name,
        iface=iface,
        public_ips=publics,
        site=site,
        subnet_file=subnet_file,
        state_dir=state_dir,
        healthz_port=healthz_port,
        healthz_listen=parse_listen(healthz_ip),
        ip_masq=ip_masq,
        lease_ttl=lease_ttl,
        resync_interval=resync_interval,
        probe_port=probe_port,
        public_ip_auto=auto,
        gateway_candidate=gateway_candidate,
        relay=relay,
        cloud_metadata=parse_mode(cloud_metadata),
        stun_servers=stun_servers,
        dns_names=own_dns_names(dns_names, "--dns-name"),
        dns_listen=parse_dns_listen(dns_listen),
        hosts_file=hosts_file,
        names_socket=names_socket if str(names_socket) not in ("", ".") else None,
    )
    phases.reach(Phase.OPTIONS)
    run_daemon(opts, DataPlane(), phases)
