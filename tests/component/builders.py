"""Builders for the values component tests need (lease records, configs)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from overlayd.config import NetworkConfig, parse_config
from overlayd.kernel_state import MacAddress
from overlayd.lease import LeaseRecord


def record(
    subnet: str, node: str = "node-a", node_id: str = "id-a", n: int = 1, **fields: Any
) -> LeaseRecord:
    """A valid lease record of node ``n`` (addresses 192.0.2.n / 10.0.0.n)."""
    return LeaseRecord(
        subnet=IPv4Network(subnet),
        node=node,
        node_id=node_id,
        public_ip=IPv4Address(f"192.0.2.{n}"),
        vtep_mac=MacAddress.from_bytes(bytes([2, 0, 0, 0, 0, n])),
        vni=1,
        private_ips=(IPv4Address(f"10.0.0.{n}"),),
        **fields,
    )


def config(**fields: Any) -> NetworkConfig:
    """A network config from flannel-style fields (``Network="10.244.0.0/16"``, …)."""
    return parse_config(json.dumps(fields))
