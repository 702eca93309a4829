"""Builders for the values tests need: lease records, network configs, guessed paths.

The one place tests build a ``LeaseRecord`` (``lease`` for any field set, ``record`` for the
usual "node n" record), so a new field or rule of the lease changes one file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from overlayd.config import NetworkConfig, parse_config
from overlayd.kernel_state import MacAddress
from overlayd.lease import LeaseRecord
from overlayd.paths import PeerPath, guess_path


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
