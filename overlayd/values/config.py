"""The network config stored at ``<prefix>/config``: flannel's JSON format, validated.

Accepted as flannel writes it (``Network``, ``SubnetLen``, ``SubnetMin``, ``SubnetMax``,
``Backend`` {``Type``, ``VNI``, ``Port``, ``MTU``, ...}); defaults follow flannel's
documented rules. Unknown keys flannel knows about are tolerated so an existing flannel
config can be read with ``--etcd-prefix /coreos.com/network``.

Backends (docs/backends.md): ``vxlan``; ``wireguard`` (every peer over WireGuard, options
as flannel's: ``ListenPort``, ``PersistentKeepaliveInterval``, ``PSK``); and
``vxlan+wireguard``: VXLAN to peers of our own site, WireGuard to peers of other sites.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from overlayd.values.errors import ConfigError
from overlayd.values.names import DEFAULT_ZONE, parse_zone
from overlayd.values.text import quote
from overlayd.values.wireguard import DEFAULT_LISTEN_PORT, PresharedKey

VXLAN = "vxlan"
WIREGUARD = "wireguard"
VXLAN_WIREGUARD = "vxlan+wireguard"  # VXLAN inside our site, WireGuard to other sites
BACKEND_TYPES = (VXLAN, WIREGUARD, VXLAN_WIREGUARD)
WIREGUARD_OPTIONS = ("ListenPort", "PersistentKeepaliveInterval", "PSK")
DEFAULT_VNI = 1
DEFAULT_VXLAN_PORT = 8472  # Linux's historical VXLAN port, flannel's default
# flannel's default is 0 (off). Ours is 25 s, wg(8)'s advice: a node behind NAT or
# masquerade is only reachable while its NAT mapping lives, and UDP mappings of common
# NATs expire after 30 s of silence (Linux conntrack's nf_conntrack_udp_timeout).
DEFAULT_KEEPALIVE = 25
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
# outer IPv6 40 (IPv4 would be 20) + UDP 8 + WireGuard header 16 + auth tag 16; as
# flannel and wg-quick, the IPv6 figure, so the MTU stays right on an IPv6 underlay too
WIREGUARD_OVERHEAD = 80
REDACTED = "(redacted)"


@dataclass(frozen=True)
class BackendConfig:
    """The ``Backend`` object. ``mtu`` None means: underlay MTU minus the backend overhead.

    ``vni`` and ``port`` are VXLAN's (used by ``vxlan`` and ``vxlan+wireguard``);
    ``listen_port``, ``persistent_keepalive`` (seconds, 0 = off) and ``psk`` are
    WireGuard's (used by ``wireguard`` and ``vxlan+wireguard``). ``psk`` is the network's
    optional pre-shared key, mixed into every WireGuard session; it never appears in
    ``repr``.
    """

    type: str = VXLAN
    vni: int = DEFAULT_VNI
    port: int = DEFAULT_VXLAN_PORT
    mtu: int | None = None
    listen_port: int = DEFAULT_LISTEN_PORT
    persistent_keepalive: int = DEFAULT_KEEPALIVE
    psk: PresharedKey | None = None

    @property
    def uses_vxlan(self) -> bool:
        """Some peers (all, or those of our site) are reached over VXLAN."""
        return self.type in (VXLAN, VXLAN_WIREGUARD)

    @property
    def uses_wireguard(self) -> bool:
        """Some peers (all, or those of other sites) are reached over WireGuard."""
        return self.type in (WIREGUARD, VXLAN_WIREGUARD)

    def to_json(self, *, redact: bool = False) -> dict[str, Any]:
        """The ``Backend`` object in flannel's form; WireGuard options only where they apply.

        ``redact`` replaces the pre-shared key by a placeholder, for showing the config to
        a person; the result then no longer parses.
        """
        out: dict[str, Any] = {"Type": self.type, "VNI": self.vni, "Port": self.port}
        if self.mtu is not None:
            out["MTU"] = self.mtu
        if self.uses_wireguard:
            out["ListenPort"] = self.listen_port
            out["PersistentKeepaliveInterval"] = self.persistent_keepalive
            if self.psk is not None:
                out["PSK"] = REDACTED if redact else base64.b64encode(self.psk.raw).decode()
        return out


MESH, GATEWAY = "mesh", "gateway"
TOPOLOGY_MODES = (MESH, GATEWAY)


@dataclass(frozen=True)
class TopologyConfig:
    """``Topology``: full mesh (default), or one elected gateway per site meshing with
    the other sites; ``sites`` overrides the mode of single sites."""

    mode: str = MESH
    sites: tuple[tuple[str, str], ...] = ()  # (site, mode), sorted

    def mode_of(self, site: str) -> str:
        return dict(self.sites).get(site, self.mode)

    @property
    def uses_gateways(self) -> bool:
        return self.mode == GATEWAY or any(m == GATEWAY for _, m in self.sites)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Mode": self.mode}
        if self.sites:
            out["Sites"] = dict(self.sites)
        return out


@dataclass(frozen=True)
class NetworkConfig:
    """A validated network config with flannel's defaults filled in."""

    network: IPv4Network
    subnet_len: int
    subnet_min: IPv4Address
    subnet_max: IPv4Address
    backend: BackendConfig
    topology: TopologyConfig = TopologyConfig()
    dns_zone: str = DEFAULT_ZONE  # ``DNSZone``: the names every daemon answers (docs/dns.md)

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
        """The VXLAN device's MTU: the configured one, else the underlay's minus 50."""
        return self.backend.mtu if self.backend.mtu is not None else underlay_mtu - VXLAN_OVERHEAD

    def wireguard_mtu(self, underlay_mtu: int) -> int:
        """The WireGuard device's MTU: the configured one, else the underlay's minus 80."""
        if self.backend.mtu is not None:
            return self.backend.mtu
        return underlay_mtu - WIREGUARD_OVERHEAD

    def subnet_mtu(self, underlay_mtu: int) -> int:
        """The MTU the subnet file publishes: safe on every path the backend uses.

        Pods do not know which path a packet takes, so in ``vxlan+wireguard`` mode it is
        the smaller of the two device MTUs (the WireGuard one, unless configured).
        """
        mtus = []
        if self.backend.uses_vxlan:
            mtus.append(self.vxlan_mtu(underlay_mtu))
        if self.backend.uses_wireguard:
            mtus.append(self.wireguard_mtu(underlay_mtu))
        return min(mtus)

    def to_json(self, *, redact: bool = False) -> str:
        """flannel's JSON with every value written out; ``parse_config`` reads it back equal.

        ``redact`` hides the pre-shared key (for display; the result then does not parse).
        """
        return json.dumps(
            {
                "Network": str(self.network),
                "SubnetLen": self.subnet_len,
                "SubnetMin": str(self.subnet_min),
                "SubnetMax": str(self.subnet_max),
                "Backend": self.backend.to_json(redact=redact),
                **({"Topology": self.topology.to_json()} if self.topology.uses_gateways else {}),
                **({"DNSZone": self.dns_zone} if self.dns_zone != DEFAULT_ZONE else {}),
            },
            indent=2,
            sort_keys=False,
        )


def _int_field(obj: dict[str, Any], key: str, where: str, default: int | None) -> int | None:
    """``obj[key]`` as an integer; absent or null: ``default``."""
    value = obj.get(key)
    if value is None:
        return default
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


def _psk_field(raw: dict[str, Any]) -> PresharedKey | None:
    """``Backend.PSK``: base64 of 32 bytes (``wg genpsk``); "" or absent means none.

    Error messages never quote the value: it is a secret, and errors are logged.
    """
    value = raw.get("PSK")
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(
            f"Backend.PSK must be a base64 string (as 'wg genpsk' prints), "
            f"got a {type(value).__name__}"
        )
    try:
        psk = PresharedKey.from_base64(value)
    except ValueError:
        raise ConfigError(
            "Backend.PSK must be 32 bytes in base64 (as 'wg genpsk' prints); "
            "the value given is not (not shown: it is a secret)"
        ) from None
    if psk.raw == bytes(len(psk.raw)):
        raise ConfigError("Backend.PSK is all zeros, which WireGuard treats as no key at all")
    return psk


def parse_backend(raw: Any) -> BackendConfig:
    """Parse and validate the ``Backend`` object (None: flannel's default, VXLAN).

    Absent ``Backend`` or ``Type`` keeps meaning ``vxlan``, so a flannel config read as-is
    runs as flannel ran it; only ``overlayctl network init`` defaults to ``vxlan+wireguard``.
    """
    if raw is None:
        return BackendConfig()
    if not isinstance(raw, dict):
        raise ConfigError(f"Backend must be an object, got {raw!r}")
    btype = raw.get("Type", VXLAN)
    if not isinstance(btype, str) or btype.lower() not in BACKEND_TYPES:
        raise ConfigError(f"unknown backend type {btype!r}; supported: {', '.join(BACKEND_TYPES)}")
    btype = btype.lower()
    vni = _int_field(raw, "VNI", "Backend.", DEFAULT_VNI)
    port = _int_field(raw, "Port", "Backend.", DEFAULT_VXLAN_PORT)
    mtu = _int_field(raw, "MTU", "Backend.", None)
    listen_port = _int_field(raw, "ListenPort", "Backend.", DEFAULT_LISTEN_PORT)
    keepalive = _int_field(raw, "PersistentKeepaliveInterval", "Backend.", DEFAULT_KEEPALIVE)
    assert vni is not None and port is not None
    assert listen_port is not None and keepalive is not None
    if not 0 <= vni < (1 << 24):
        raise ConfigError(f"Backend.VNI must be between 0 and 16777215, got {vni}")
    if not 1 <= port <= 65535:
        raise ConfigError(f"Backend.Port must be between 1 and 65535, got {port}")
    if mtu is not None and not 576 <= mtu <= 65535:
        raise ConfigError(f"Backend.MTU must be between 576 and 65535, got {mtu}")
    if btype == VXLAN:
        # a WireGuard option on a plain VXLAN network is a mistake, and for PSK a
        # dangerous one: the operator believes traffic is encrypted while it is not
        given = [key for key in WIREGUARD_OPTIONS if raw.get(key) not in (None, "")]
        if given:
            raise ConfigError(
                f"Backend.{given[0]} is a WireGuard option, but Backend.Type is 'vxlan', "
                f"which does not encrypt; use '{WIREGUARD}' or '{VXLAN_WIREGUARD}'"
            )
    if not 1 <= listen_port <= 65535:
        raise ConfigError(f"Backend.ListenPort must be between 1 and 65535, got {listen_port}")
    if not 0 <= keepalive <= 65535:
        raise ConfigError(
            f"Backend.PersistentKeepaliveInterval must be between 0 (off) and 65535 seconds, "
            f"got {keepalive}"
        )
    if btype == VXLAN_WIREGUARD and listen_port == port:
        raise ConfigError(
            f"Backend.ListenPort and Backend.Port are both {port}: WireGuard and VXLAN "
            "cannot share one UDP port"
        )
    return BackendConfig(
        type=btype,
        vni=vni,
        port=port,
        mtu=mtu,
        listen_port=listen_port,
        persistent_keepalive=keepalive,
        psk=_psk_field(raw),
    )


def _network_field(raw: dict[str, Any]) -> IPv4Network:
    net_text = raw.get("Network")
    if not isinstance(net_text, str) or not net_text:
        raise ConfigError('network config has no Network (e.g. "10.244.0.0/16")')
    try:
        return IPv4Network(net_text)
    except ValueError as exc:
        raise ConfigError(f"Network {net_text!r} is not a valid IPv4 network: {exc}") from None


def _subnet_len_field(raw: dict[str, Any], network: IPv4Network) -> int:
    """``SubnetLen``, checked against ``network``, or flannel's default for it."""
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
        return subnet_len
    if ones > 28:
        raise ConfigError(f"Network {network} is too small; the smallest usable is a /28")
    # flannel: a /24 per host, unless the network is smaller than a /22, then split in four
    return 24 if ones <= 22 else ones + 2


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
    network = _network_field(raw)
    subnet_len = _subnet_len_field(raw, network)
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
    backend = parse_backend(raw.get("Backend"))
    topology = parse_topology(raw.get("Topology"))
    if topology.uses_gateways and backend.type != VXLAN_WIREGUARD:
        raise ConfigError(
            f"Topology gateway mode needs Backend.Type {VXLAN_WIREGUARD!r} (VXLAN inside a "
            f"site, WireGuard between the gateways), not {backend.type!r}"
        )
    zone = raw.get("DNSZone", DEFAULT_ZONE)
    if not isinstance(zone, str):
        raise ConfigError(f"DNSZone must be a string, got {quote(zone)}")
    return NetworkConfig(
        network=network,
        subnet_len=subnet_len,
        subnet_min=subnet_min,
        subnet_max=subnet_max,
        backend=backend,
        topology=topology,
        dns_zone=parse_zone(zone),
    )


def parse_topology(raw: Any) -> TopologyConfig:
    """The ``Topology`` object: {"Mode": "mesh"|"gateway", "Sites": {"<site>": mode}}."""
    if raw is None:
        return TopologyConfig()
    if not isinstance(raw, dict):
        raise ConfigError(f"Topology must be an object, got {raw!r}")

    def mode(value: Any, where: str) -> str:
        if not isinstance(value, str) or value.lower() not in TOPOLOGY_MODES:
            raise ConfigError(f"{where} must be one of {', '.join(TOPOLOGY_MODES)}, got {value!r}")
        return value.lower()

    sites = raw.get("Sites", {})
    if not isinstance(sites, dict) or not all(isinstance(k, str) and k for k in sites):
        raise ConfigError(f"Topology.Sites must map site names to modes, got {sites!r}")
    return TopologyConfig(
        mode=mode(raw.get("Mode", MESH), "Topology.Mode"),
        sites=tuple(sorted((k, mode(v, f"Topology.Sites.{k}")) for k, v in sites.items())),
    )
