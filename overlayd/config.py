"""The network config stored at ``<prefix>/config``: flannel's JSON format, validated.

Accepted as flannel writes it (``Network``, ``SubnetLen``, ``SubnetMin``, ``SubnetMax``,
``Backend`` {``Type``, ``VNI``, ``Port``, ``MTU``, ...}); defaults follow flannel's
documented rules. Unknown keys flannel knows about are tolerated so an existing flannel
config can be read with ``--etcd-prefix /coreos.com/network``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from overlayd.errors import ConfigError

BACKEND_TYPES = ("vxlan",)
DEFAULT_VNI = 1
DEFAULT_VXLAN_PORT = 8472  # Linux's historical VXLAN port, flannel's default
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14


@dataclass(frozen=True)
class BackendConfig:
    """The ``Backend`` object. ``mtu`` None means: underlay MTU minus the backend overhead."""

    type: str = "vxlan"
    vni: int = DEFAULT_VNI
    port: int = DEFAULT_VXLAN_PORT
    mtu: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Type": self.type, "VNI": self.vni, "Port": self.port}
        if self.mtu is not None:
            out["MTU"] = self.mtu
        return out


@dataclass(frozen=True)
class NetworkConfig:
    """A validated network config with flannel's defaults filled in."""

    network: IPv4Network
    subnet_len: int
    subnet_min: IPv4Address
    subnet_max: IPv4Address
    backend: BackendConfig

    @property
    def subnet_size(self) -> int:
        return 1 << (32 - self.subnet_len)

    def subnet_count(self) -> int:
        """How many subnets lie between SubnetMin and SubnetMax (inclusive)."""
        return (int(self.subnet_max) - int(self.subnet_min)) // self.subnet_size + 1

    def subnet_at(self, index: int) -> IPv4Network:
        """The ``index``-th allocatable subnet (0 = SubnetMin)."""
        base = IPv4Address(int(self.subnet_min) + index * self.subnet_size)
        return IPv4Network(f"{base}/{self.subnet_len}")

    def is_allocatable(self, subnet: IPv4Network) -> bool:
        return (
            subnet.prefixlen == self.subnet_len
            and self.subnet_min <= subnet.network_address <= self.subnet_max
        )

    def vxlan_mtu(self, underlay_mtu: int) -> int:
        return self.backend.mtu if self.backend.mtu is not None else underlay_mtu - VXLAN_OVERHEAD

    def to_json(self) -> str:
        return json.dumps(
            {
                "Network": str(self.network),
                "SubnetLen": self.subnet_len,
                "SubnetMin": str(self.subnet_min),
                "SubnetMax": str(self.subnet_max),
                "Backend": self.backend.to_json(),
            },
            indent=2,
            sort_keys=False,
        )


def _int_field(obj: dict[str, Any], key: str, where: str, default: int | None) -> int | None:
    value = obj.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}{key} must be an integer, got {value!r}")
    return value


def _addr_field(obj: dict[str, Any], key: str) -> IPv4Address | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    try:
        return IPv4Address(value)
    except ValueError:
        raise ConfigError(f"{key} {value!r} is not an IPv4 address") from None


def parse_backend(raw: Any) -> BackendConfig:
    if raw is None:
        return BackendConfig()
    if not isinstance(raw, dict):
        raise ConfigError(f"Backend must be an object, got {raw!r}")
    btype = raw.get("Type", "vxlan")
    if not isinstance(btype, str) or btype.lower() not in BACKEND_TYPES:
        raise ConfigError(f"unknown backend type {btype!r}; supported: {', '.join(BACKEND_TYPES)}")
    vni = _int_field(raw, "VNI", "Backend.", DEFAULT_VNI)
    port = _int_field(raw, "Port", "Backend.", DEFAULT_VXLAN_PORT)
    mtu = _int_field(raw, "MTU", "Backend.", None)
    assert vni is not None and port is not None
    if not 0 <= vni < (1 << 24):
        raise ConfigError(f"Backend.VNI must be between 0 and 16777215, got {vni}")
    if not 1 <= port <= 65535:
        raise ConfigError(f"Backend.Port must be between 1 and 65535, got {port}")
    if mtu is not None and not 576 <= mtu <= 65535:
        raise ConfigError(f"Backend.MTU must be between 576 and 65535, got {mtu}")
    return BackendConfig(type=btype.lower(), vni=vni, port=port, mtu=mtu)


def parse_config(text: str | bytes) -> NetworkConfig:
    """Parse and validate a flannel-format network config; ``ConfigError`` says what is wrong."""
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ConfigError(
            f"network config is not JSON: {str(exc)[:200] or 'nested too deeply'}"
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError("network config must be a JSON object")
    if raw.get("EnableIPv6") and not raw.get("EnableIPv4", True):
        raise ConfigError("IPv6-only networks are not supported yet")
    net_text = raw.get("Network")
    if not isinstance(net_text, str) or not net_text:
        raise ConfigError('network config has no Network (e.g. "10.244.0.0/16")')
    try:
        network = IPv4Network(net_text)
    except ValueError as exc:
        raise ConfigError(f"Network {net_text!r} is not a valid IPv4 network: {exc}") from None
    ones = network.prefixlen
    subnet_len = _int_field(raw, "SubnetLen", "", 0)
    assert subnet_len is not None
    if subnet_len:
        if subnet_len > 30:
            raise ConfigError(f"SubnetLen must be at most 30, got {subnet_len}")
        if subnet_len < ones + 2:
            raise ConfigError(
                f"SubnetLen {subnet_len} is too large a subnet for Network {network}: "
                f"it must be at least /{ones + 2} so the network holds four subnets"
            )
    elif ones > 28:
        raise ConfigError(f"Network {network} is too small; the smallest usable is a /28")
    else:
        # flannel: a /24 per host, unless the network is smaller than a /22, then split in four
        subnet_len = 24 if ones <= 22 else ones + 2
    size = 1 << (32 - subnet_len)
    mask = (0xFFFFFFFF << (32 - subnet_len)) & 0xFFFFFFFF
    # flannel skips the first subnet by default: its .0 would clash with the network address
    subnet_min = _addr_field(raw, "SubnetMin") or IPv4Address(int(network.network_address) + size)
    subnet_max = _addr_field(raw, "SubnetMax") or IPv4Address(
        int(network.broadcast_address) + 1 - size
    )
    for name, addr in (("SubnetMin", subnet_min), ("SubnetMax", subnet_max)):
        if addr not in network:
            raise ConfigError(f"{name} {addr} is outside Network {network}")
        if int(addr) & mask != int(addr):
            raise ConfigError(f"{name} {addr} is not on a /{subnet_len} boundary")
    if subnet_min > subnet_max:
        raise ConfigError(f"SubnetMin {subnet_min} is above SubnetMax {subnet_max}")
    return NetworkConfig(
        network=network,
        subnet_len=subnet_len,
        subnet_min=subnet_min,
        subnet_max=subnet_max,
        backend=parse_backend(raw.get("Backend")),
    )
