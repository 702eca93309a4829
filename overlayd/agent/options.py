"""``DaemonOptions``: what ``overlayd``'s flags say, as one frozen value.

Built by the composition root (overlayd/cli/daemon_main.py) and read by the agent's parts;
imports nothing of the agent.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from overlayd.agent.status_listen import LOOPBACK, ListenSpec
from overlayd.discovery.metadata import Provider
from overlayd.discovery.stun import StunServer
from overlayd.probe.wire import DEFAULT_PORT as DEFAULT_PROBE_PORT
from overlayd.store.etcd import EtcdSettings
from overlayd.values.names import DNS_OFF, DnsListen

NAMES_SOCKET = Path("/run/overlayd/names.sock")  # the CNI plugin registers containers here

RESYNC_INTERVAL = 30.0  # full read-back of the kernel state, besides netlink notifications


@dataclass(frozen=True)
class DaemonOptions:
    """Everything ``overlayd``'s flags say."""

    etcd: EtcdSettings
    node_name: str
    iface: str | None
    public_ips: tuple[IPv4Address, ...]
    site: str
    subnet_file: Path
    state_dir: Path
    healthz_port: int
    healthz_listen: ListenSpec = LOOPBACK
    ip_masq: bool = False
    lease_ttl: int = 86400
    resync_interval: float = RESYNC_INTERVAL
    probe_port: int = DEFAULT_PROBE_PORT
    public_ip_auto: bool = True  # publish public addresses that peers in other sites confirm
    gateway_candidate: bool = True  # may be elected its site's gateway (gateway topology)
    relay: bool | None = None  # forward for stranded pairs; None: if it has a public address
    cloud_metadata: tuple[Provider, ...] = ()  # whose metadata service to ask (with auto)
    stun_servers: tuple[StunServer, ...] = ()  # STUN servers to ask (with auto)
    dns_names: tuple[str, ...] = ()  # aliases published in our lease (docs/dns.md)
    # where the DNS responder listens (the flag's default: the overlay address, port 53)
    dns_listen: DnsListen = DNS_OFF
    hosts_file: Path | None = None  # --hosts-file: the zone's names kept in its marked block
    names_socket: Path | None = None  # the CNI plugin's registrations (flag default NAMES_SOCKET)
