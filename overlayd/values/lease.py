"""Subnet lease records: ``<prefix>/subnets/<a.b.c.d>-<len>`` and their JSON value.

The value carries flannel's fields (``PublicIP``, ``BackendType``, ``BackendData`` with
``VtepMAC`` and ``VNI``) so flannel tools can read it, plus ours (node name and id, site,
candidate underlay addresses). See docs/etcd-schema.md. Decoding is strict about types and
raises ``LeaseFormatError``: a malformed record is skipped by its reader, never fatal.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from overlayd.values.errors import LeaseFormatError
from overlayd.values.kernel_state import MacAddress
from overlayd.values.lease_rules import (
    MAX_ADDRESSES,
    MAX_DNS_NAMES,
    MAX_ENDPOINTS,
    MAX_RELAY_RTTS,
    MAX_SEEN,
    MAX_VALUE_BYTES,
    flannel_node_name,
    is_backend_type,
    is_dns_name,
    is_label,
    is_node_id,
    relay_rtt_error,
    scope_error,
)
from overlayd.values.text import quote
from overlayd.values.wireguard import Endpoint

DEFAULT_SITE = "default"


def subnet_key_name(subnet: IPv4Network) -> str:
    """flannel's key form: ``10.244.3.0-24``."""
    return f"{subnet.network_address}-{subnet.prefixlen}"


def parse_subnet_key_name(name: str) -> IPv4Network:
    """Inverse of ``subnet_key_name``; ``LeaseFormatError`` on anything else."""
    addr, sep, plen = name.rpartition("-")
    try:
        # exactly a.b.c.d-len: "-024" or "-+24" would alias one subnet under several keys
        if not sep or not plen.isascii() or not plen.isdigit() or plen != str(int(plen)):
            raise ValueError("expected a.b.c.d-len")
        return IPv4Network(f"{addr}/{plen}")
    except ValueError as exc:
        raise LeaseFormatError(f"key {name!r} is not a subnet key (a.b.c.d-len): {exc}") from None


def parse_subnet_arg(text: str) -> IPv4Network:
    """A subnet given by a person: ``10.244.3.0/24`` or flannel's ``10.244.3.0-24``."""
    return parse_subnet_key_name(text.replace("/", "-"))


@dataclass(frozen=True, slots=True)
class NodeEndpoints:
    """Where peers of other sites saw this node's datagrams come from, per socket: the
    probe port's and the WireGuard port's NAT mappings (docs/nat.md, "Endpoints seen by
    others"). Empty for a node nobody saw behind a NAT."""

    probe: tuple[Endpoint, ...] = ()
    wireguard: tuple[Endpoint, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.probe or self.wireguard)


@dataclass(frozen=True, slots=True)
class SeenEndpoints:
    """What this node saw of one peer's sockets: the source of its probes and the
    endpoint our WireGuard device learned from its handshakes (None: not seen)."""

    subnet: IPv4Network
    probe: Endpoint | None = None
    wireguard: Endpoint | None = None


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """What a node publishes about itself with its subnet."""

    subnet: IPv4Network
    node: str
    node_id: str
    public_ip: IPv4Address  # flannel's PublicIP: the node's default underlay address
    vtep_mac: MacAddress
    vni: int
    site: str = DEFAULT_SITE
    private_ips: tuple[IPv4Address, ...] = ()
    public_ips: tuple[IPv4Address, ...] = ()
    backend_type: str = "vxlan"
    public_key: str | None = None  # base64 X25519 node key: probe identity and WireGuard key
    probe_port: int | None = None  # UDP port of the authenticated path probes
    wireguard_port: int | None = None  # WireGuard listen port, when the node runs WireGuard
    gateway_candidate: bool | None = None  # may be its site's gateway (gateway topology only)
    # public addresses the node learned for itself (cloud metadata, STUN) that no peer of
    # another site confirmed yet: probed by peers, never guessed (docs/nat.md)
    candidates: tuple[IPv4Address, ...] = ()
    relay: bool | None = None  # forwards between its WireGuard peers for pairs that need it
    # round trips (ms) to the relays this node verified, by relay subnet, sorted: both ends
    # of a relayed pair choose the same relay from them (overlayd/planning/relay.py)
    relay_rtts: tuple[tuple[IPv4Network, int], ...] = ()
    # our sockets' NAT mappings as peers of other sites saw them (collected from their
    # ``seen``), and what we saw of peers behind NAT for them to collect (docs/nat.md)
    endpoints: NodeEndpoints = NodeEndpoints()
    seen: tuple[SeenEndpoints, ...] = ()
    dns_names: tuple[str, ...] = ()  # aliases in the network's zone (docs/dns.md), sorted

    @property
    def overlay_ip(self) -> IPv4Address:
        """The address on the node's overlay device: its subnet's ``.0`` (as flannel)."""
        return self.subnet.network_address

    def to_json(self) -> str:
        out: dict[str, Any] = {
            "PublicIP": str(self.public_ip),
            "BackendType": self.backend_type,
            "BackendData": {"VtepMAC": str(self.vtep_mac), "VNI": self.vni},
            "Node": self.node,
            "NodeID": self.node_id,
            "Site": self.site,
            "PrivateIPs": [str(a) for a in self.private_ips],
            "PublicIPs": [str(a) for a in self.public_ips],
        }
        for key, value in (
            ("PublicKey", self.public_key),
            ("ProbePort", self.probe_port),
            ("WireGuardPort", self.wireguard_port),
            ("GatewayCandidate", self.gateway_candidate),
        ):
            if value is not None:
                out[key] = value
        if self.candidates:
            out["Candidates"] = [str(a) for a in self.candidates]
        if self.relay is not None:
            out["Relay"] = self.relay
        if self.relay_rtts:
            out["RelayRTTs"] = {subnet_key_name(s): ms for s, ms in self.relay_rtts}
        if self.endpoints:
            out["Endpoints"] = {
                "Probe": [str(e) for e in self.endpoints.probe],
                "WireGuard": [str(e) for e in self.endpoints.wireguard],
            }
        if self.seen:
            out["Seen"] = [_seen_json(s) for s in self.seen]
        if self.dns_names:
            out["DNSNames"] = list(self.dns_names)
        return json.dumps(out, sort_keys=True)


def _seen_json(seen: SeenEndpoints) -> dict[str, str]:
    out = {"Subnet": subnet_key_name(seen.subnet)}
    if seen.probe is not None:
        out["Probe"] = str(seen.probe)
    if seen.wireguard is not None:
        out["WireGuard"] = str(seen.wireguard)
    return out


def _addr(value: Any, what: str) -> IPv4Address:
    if not isinstance(value, str):
        raise LeaseFormatError(f"{what} must be a string, got {quote(value)}")
    try:
        address = IPv4Address(value)
    except ValueError:
        raise LeaseFormatError(f"{what} {quote(value)} is not an IPv4 address") from None
    if (why := scope_error(address)) is not None:
        raise LeaseFormatError(f"{what} {address} is {why}, not an underlay address")
    return address


def _addrs(value: Any, what: str) -> tuple[IPv4Address, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise LeaseFormatError(f"{what} must be a list, got {quote(value)}")
    if len(value) > MAX_ADDRESSES:
        raise LeaseFormatError(f"{what} has {len(value)} items, at most {MAX_ADDRESSES} allowed")
    return tuple(_addr(v, what) for v in value)


def _endpoint(value: Any, what: str) -> Endpoint:
    if not isinstance(value, str) or len(value) > 21:  # "255.255.255.255:65535"
        raise LeaseFormatError(f"{what} must be an a.b.c.d:port string, got {quote(value)}")
    try:
        endpoint = Endpoint.parse(value)
    except ValueError:
        raise LeaseFormatError(f"{what} {quote(value)} is not an a.b.c.d:port endpoint") from None
    _addr(str(endpoint.address), what)  # the scope rules of every underlay address
    return endpoint


def _endpoint_list(obj: dict[str, Any], key: str, what: str) -> tuple[Endpoint, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise LeaseFormatError(f"{what} must be a list, got {quote(value)}")
    if len(value) > MAX_ENDPOINTS:
        raise LeaseFormatError(f"{what} has {len(value)} items, at most {MAX_ENDPOINTS} allowed")
    return tuple(_endpoint(v, what) for v in value)


def _endpoints(value: Any) -> NodeEndpoints:
    if value is None:
        return NodeEndpoints()
    if not isinstance(value, dict):
        raise LeaseFormatError(f"Endpoints must be an object, got {quote(value)}")
    return NodeEndpoints(
        _endpoint_list(value, "Probe", "Endpoints.Probe"),
        _endpoint_list(value, "WireGuard", "Endpoints.WireGuard"),
    )


def _seen(value: Any) -> tuple[SeenEndpoints, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise LeaseFormatError(f"Seen must be a list, got {quote(value)}")
    if len(value) > MAX_SEEN:
        raise LeaseFormatError(f"Seen has {len(value)} items, at most {MAX_SEEN} allowed")
    out = []
    for item in value:
        if not isinstance(item, dict):
            raise LeaseFormatError(f"Seen items must be objects, got {quote(item)}")
        subnet = parse_subnet_key_name(_str(item, "Subnet", ""))
        probe, wireguard = item.get("Probe"), item.get("WireGuard")
        out.append(
            SeenEndpoints(
                subnet,
                None if probe is None else _endpoint(probe, "Seen.Probe"),
                None if wireguard is None else _endpoint(wireguard, "Seen.WireGuard"),
            )
        )
    return tuple(out)


def _port(obj: dict[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise LeaseFormatError(f"{key} must be a port number, got {quote(value)}")
    return value


def _optional_bool(obj: dict[str, Any], key: str) -> bool | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, bool):
        raise LeaseFormatError(f"{key} must be true or false, got {quote(value)}")
    return value


def _public_key(obj: dict[str, Any]) -> str | None:
    value = obj.get("PublicKey")
    if value is None:
        return None
    raw = b""
    if isinstance(value, str) and len(value) == 44:  # 32 bytes of base64, padded
        with contextlib.suppress(ValueError):
            raw = base64.b64decode(value, validate=True)
    if len(raw) != 32:
        raise LeaseFormatError(f"PublicKey must be 32 bytes of base64, got {quote(value)}")
    return str(value)


def _relay_rtts(value: Any) -> tuple[tuple[IPv4Network, int], ...]:
    """``RelayRTTs``: an object of relay subnet keys (``10.244.3.0-24``) to milliseconds."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise LeaseFormatError(f"RelayRTTs must be an object, got {quote(value)}")
    if len(value) > MAX_RELAY_RTTS:
        raise LeaseFormatError(
            f"RelayRTTs has {len(value)} entries, at most {MAX_RELAY_RTTS} allowed"
        )
    out = []
    for key, ms in value.items():
        try:
            subnet = parse_subnet_key_name(key)
        except LeaseFormatError:  # its message quotes the whole key
            raise LeaseFormatError(
                f"RelayRTTs key {quote(key)} is not a subnet key (a.b.c.d-len)"
            ) from None
        if (why := relay_rtt_error(ms)) is not None:
            raise LeaseFormatError(f"RelayRTTs {subnet_key_name(subnet)} {why}, got {quote(ms)}")
        out.append((subnet, ms))
    return tuple(sorted(out, key=lambda item: (int(item[0].network_address), item[0].prefixlen)))


def _dns_names(obj: dict[str, Any]) -> tuple[str, ...]:
    """``DNSNames``: a list of at most ``MAX_DNS_NAMES`` DNS names (read lower-cased)."""
    value = obj.get("DNSNames")
    if value is None:
        return ()
    if not isinstance(value, list):
        raise LeaseFormatError(f"DNSNames must be a list, got {quote(value)}")
    if len(value) > MAX_DNS_NAMES:
        raise LeaseFormatError(f"DNSNames has {len(value)} items, at most {MAX_DNS_NAMES}")
    for name in value:
        if not isinstance(name, str) or not is_dns_name(name):
            raise LeaseFormatError(f"DNSNames item {quote(name)} is not a DNS name")
    return tuple(sorted({name.lower() for name in value}))


def _str(obj: dict[str, Any], key: str, default: str) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise LeaseFormatError(f"{key} must be a string, got {quote(value)}")
    return value


def _checked(
    obj: dict[str, Any], key: str, default: str, ok: Callable[[str], bool], rule: str
) -> str:
    value = _str(obj, key, default)
    if not ok(value):
        raise LeaseFormatError(f"{key} {quote(value)} is not {rule}")
    return value


def decode_lease(subnet: IPv4Network, value: bytes | str) -> LeaseRecord:
    """Decode a lease value stored under ``subnet``'s key.

    Leases written by flannel (no ``Node``/``NodeID``) decode too: such a node is named
    after its PublicIP (``flannel-192-0-2-1``) so it can still be programmed as a peer.
    What a record may say (sizes, names, address scope) is ``overlayd.values.lease_rules``'s;
    the scope check against the overlay network is ``lease_rules.check_scope``.
    """
    if not value:
        raise LeaseFormatError(f"lease {subnet} has an empty value")
    size = len(value.encode() if isinstance(value, str) else value)
    if size > MAX_VALUE_BYTES:  # before parsing: a huge value costs every daemon memory
        raise LeaseFormatError(f"lease {subnet} is {size} bytes, at most {MAX_VALUE_BYTES}")
    try:
        raw = json.loads(value)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise LeaseFormatError(f"lease {subnet} is not JSON: {quote(str(exc))}") from None
    if not isinstance(raw, dict):
        raise LeaseFormatError(f"lease {subnet} must be a JSON object")
    try:
        return _record(subnet, raw)
    except LeaseFormatError as exc:
        raise LeaseFormatError(f"lease {subnet}: {exc}") from None


def _record(subnet: IPv4Network, raw: dict[str, Any]) -> LeaseRecord:
    public_ip = _addr(raw.get("PublicIP"), "PublicIP")
    backend = raw.get("BackendData")
    if not isinstance(backend, dict):
        raise LeaseFormatError("BackendData must be an object")
    try:
        mac = MacAddress.parse(_str(backend, "VtepMAC", ""))
    except ValueError:
        # the parser's message quotes the whole value
        raise LeaseFormatError(
            f"VtepMAC {quote(backend.get('VtepMAC'))}: invalid MAC address"
        ) from None
    vni = backend.get("VNI", 1)
    if isinstance(vni, bool) or not isinstance(vni, int) or not 0 <= vni < 1 << 24:
        raise LeaseFormatError(f"VNI must be an integer 0..16777215, got {quote(vni)}")
    label = "a DNS label (1-63 of A-Z a-z 0-9 -, no hyphen at either end)"
    node = _checked(raw, "Node", flannel_node_name(public_ip), is_label, label)
    # one object per distinct address/site string: thousands of leases repeat them
    private_ips = tuple(
        public_ip if a == public_ip else a for a in _addrs(raw.get("PrivateIPs"), "PrivateIPs")
    )
    site = _str(raw, "Site", DEFAULT_SITE) or DEFAULT_SITE
    if not is_label(site):
        raise LeaseFormatError(f"Site {quote(site)} is not {label}")
    return LeaseRecord(
        subnet=subnet,
        node=node,
        node_id=_checked(
            raw, "NodeID", "", is_node_id, "a node id (up to 64 of A-Z a-z 0-9 . _ -)"
        ),
        public_ip=public_ip,
        vtep_mac=mac,
        vni=vni,
        site=sys.intern(site),
        private_ips=private_ips,
        public_ips=_addrs(raw.get("PublicIPs"), "PublicIPs"),
        backend_type=sys.intern(
            _checked(raw, "BackendType", "vxlan", is_backend_type, "a backend type name")
        ),
        public_key=_public_key(raw),
        probe_port=_port(raw, "ProbePort"),
        wireguard_port=_port(raw, "WireGuardPort"),
        gateway_candidate=_optional_bool(raw, "GatewayCandidate"),
        candidates=_addrs(raw.get("Candidates"), "Candidates"),
        relay=_optional_bool(raw, "Relay"),
        relay_rtts=_relay_rtts(raw.get("RelayRTTs")),
        endpoints=_endpoints(raw.get("Endpoints")),
        seen=_seen(raw.get("Seen")),
        dns_names=_dns_names(raw),
    )
