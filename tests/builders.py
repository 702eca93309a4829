"""Builders for the values tests need: lease records, network configs, guessed paths.

The one place tests build a ``LeaseRecord`` (``lease`` for any field set, ``record`` for the
usual "node n" record), so a new field or rule of the lease changes one file.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from overlayd.agent.options import DaemonOptions
from overlayd.store.etcd import EtcdSettings
from overlayd.values.config import NetworkConfig, parse_config
from overlayd.values.kernel_state import MacAddress
from overlayd.values.lease import LeaseRecord
from overlayd.values.paths import PeerPath, guess_path


def mac(n: int) -> MacAddress:
    """The locally administered VTEP MAC of node ``n`` (``02:00:00:00:<n // 256>:<n % 256>``)."""
    return MacAddress.from_bytes(bytes([2, 0, 0, 0, n // 256, n % 256]))


def lease(
    subnet: str | IPv4Network,
    public_ip: str | IPv4Address,
    *,
    node: str = "node-a",
    node_id: str = "id-a",
    vtep_mac: MacAddress | str = "02:00:00:00:00:01",
    vni: int = 1,
    private_ips: tuple[str | IPv4Address, ...] = (),
    public_ips: tuple[str | IPv4Address, ...] = (),
    **fields: Any,
) -> LeaseRecord:
    """A lease record; addresses may be given as strings, other fields as ``LeaseRecord``'s."""
    return LeaseRecord(
        subnet=IPv4Network(subnet),
        node=node,
        node_id=node_id,
        public_ip=IPv4Address(public_ip),
        vtep_mac=vtep_mac if isinstance(vtep_mac, MacAddress) else MacAddress.parse(vtep_mac),
        vni=vni,
        private_ips=tuple(IPv4Address(a) for a in private_ips),
        public_ips=tuple(IPv4Address(a) for a in public_ips),
        **fields,
    )


def node_lease(
    n: int,
    public_ip: str | IPv4Address,
    *,
    node: str | None = None,
    node_id: str | None = None,
    subnet: str | IPv4Network | None = None,
    mac_n: int | None = None,
    **fields: Any,
) -> LeaseRecord:
    """The lease of synthetic node ``n``: subnet 10.244.<n>.0/24 (past 10.244 for n > 255),
    node ``node<n>``, id ``id<n>``, VTEP MAC ``mac(n)`` (``mac_n``: another node's); any
    other field as ``lease`` takes it."""
    return lease(
        IPv4Network((0x0AF40000 + (n << 8), 24)) if subnet is None else subnet,
        public_ip,
        node=f"node{n}" if node is None else node,
        node_id=f"id{n}" if node_id is None else node_id,
        vtep_mac=mac(n if mac_n is None else mac_n),
        **fields,
    )


def keeper_template(node: str, node_id: str, vni: int = 1) -> LeaseRecord:
    """A lease keeper's template: this node's record with a placeholder subnet."""
    return lease(
        "0.0.0.0/32",
        "192.0.2.10",
        node=node,
        node_id=node_id,
        vtep_mac="02:00:00:00:00:aa",
        vni=vni,
    )


def wg_key(n: int) -> str:
    """A fixed, well-formed WireGuard public key for node ``n`` (n < 65536)."""
    return base64.b64encode(bytes([n & 0xFF, n >> 8]) + bytes(30)).decode()


def record(
    subnet: str, node: str = "node-a", node_id: str = "id-a", n: int = 1, **fields: Any
) -> LeaseRecord:
    """A valid lease record of node ``n`` (addresses 192.0.2.n / 10.0.0.n)."""
    return lease(
        subnet,
        f"192.0.2.{n}",
        node=node,
        node_id=node_id,
        vtep_mac=mac(n),
        private_ips=(f"10.0.0.{n}",),
        **fields,
    )


def config(**fields: Any) -> NetworkConfig:
    """A network config from flannel-style fields (``Network="10.244.0.0/16"``, …)."""
    return parse_config(json.dumps(fields))


def guessed_paths(
    me: LeaseRecord, leases: Mapping[IPv4Network, LeaseRecord]
) -> dict[IPv4Network, PeerPath]:
    """The path ``me`` guesses (by site, no probes) for every other lease in ``leases``."""
    paths = {}
    for subnet, peer in leases.items():
        if subnet == me.subnet:
            continue
        path = guess_path(me, peer)
        assert path is not None, "a lease always has its PublicIP to fall back on"
        paths[subnet] = path
    return paths


def daemon_options(tmp_path: Path, **overrides: Any) -> DaemonOptions:
    """A daemon's options for tests without root: files under ``tmp_path``, no status port,
    no --public-ip; ``overrides`` replace any field."""
    fields: dict[str, Any] = {
        "etcd": EtcdSettings(),
        "node_name": "n1",
        "iface": None,
        "public_ips": (),
        "site": "default",
        "subnet_file": tmp_path / "subnet.env",
        "state_dir": tmp_path / "state",
        "healthz_port": 0,
    }
    return DaemonOptions(**{**fields, **overrides})


def site_lease(n: int, site: str, backend: str, public: str | None = None) -> LeaseRecord:
    """Node ``n`` in ``site`` on ``backend``: subnet 10.244.n.0/24, private 10.0.0.n, a
    WireGuard key and port, and ``public`` as its public address if given."""
    private = f"10.0.0.{n}"
    return node_lease(
        n,
        public or private,
        site=site,
        private_ips=(private,),
        public_ips=(public,) if public else (),
        backend_type=backend,
        public_key=wg_key(n),
        wireguard_port=51820,
    )
