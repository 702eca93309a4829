"""The network's DNS names as values (pure): the zone, container names and their records.

Every daemon answers DNS for the network's zone (``DNSZone`` in the network config, default
``overlay.internal``; docs/dns.md) from the leases it watches. Containers are named by the
CNI plugin, which tells the local daemon over a Unix socket (``Registration``, one JSON
line: overlayd/values/registration.py); the daemon publishes each one under
``<prefix>/names/<subnet-key>/<id>`` (``ContainerName``), bound to its own etcd lease.
What a container record may say is checked here as the lease rules check a lease: a
bounded value, a DNS label for a name, an address inside the node's subnet (that check
needs the lease: ``planning/names.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from overlayd.values.errors import ConfigError, LeaseFormatError
from overlayd.values.lease import parse_subnet_key_name, subnet_key_name
from overlayd.values.lease_rules import is_dns_name, is_label
from overlayd.values.registration import is_container_id
from overlayd.values.text import json_object, quote

DEFAULT_ZONE = "overlay.internal"
"""``.internal`` is reserved for private use (ICANN, 2024): it never clashes with the DNS."""
MAX_ZONE = 50
"""A zone's length limit: an alias (200) with the zone still fits DNS's 253 characters."""
TTL = 5
"""Seconds every answer (and a negative answer) may be cached: names follow leases fast."""
MAX_CONTAINER_VALUE = 512
"""A container record's size limit (a real one is ~60 bytes)."""

DNS_PORT = 53
OVERLAY = "overlay"
"""The ``--dns-listen`` value that means "this node's overlay address, once leased"."""


@dataclass(frozen=True)
class DnsListen:
    """Where the responder listens: the overlay address at ``overlay_port`` (None: not
    there) and fixed ``(address, port)`` pairs (loopback, say)."""

    overlay_port: int | None = DNS_PORT
    fixed: tuple[tuple[IPv4Address, int], ...] = ()

    @property
    def enabled(self) -> bool:
        return self.overlay_port is not None or bool(self.fixed)


DNS_OFF = DnsListen(overlay_port=None)
"""Not listening anywhere."""


def _listen_item(text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep:
        return text, DNS_PORT
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port {port_text!r}")
    return host, int(port_text)


def parse_dns_listen(values: tuple[str, ...]) -> DnsListen:
    """``--dns-listen`` values: ``overlay[:PORT]``, ``IP[:PORT]`` or ``off``; never a
    host name (what it resolves to is not something to guess for a port that must not
    leak). ``ConfigError`` for anything else."""
    overlay: int | None = None
    fixed: set[tuple[IPv4Address, int]] = set()
    for value in values:
        text = value.strip()
        if text == "off":
            continue
        try:
            host, port = _listen_item(text)
            if host == OVERLAY:
                overlay = port
            else:
                fixed.add((IPv4Address(host), port))
        except ValueError:
            raise ConfigError(
                f"--dns-listen {quote(value)} is not overlay[:PORT], IPv4[:PORT] or off",
                hint="e.g. --dns-listen overlay (the default: port 53 on this node's overlay "
                "address) --dns-listen 127.0.0.1:5354",
            ) from None
    return DnsListen(overlay, tuple(sorted(fixed)))


def parse_zone(text: str, where: str = "DNSZone") -> str:
    """``text`` as a zone name (lower case, no trailing dot), else a ``ConfigError``."""
    zone = text.strip().rstrip(".").lower()
    if not is_dns_name(zone) or len(zone) > MAX_ZONE or zone.endswith(".arpa"):
        raise ConfigError(
            f"{where} {quote(text)} is not a DNS zone name",
            hint=f"labels of letters, digits and hyphens joined by dots, at most {MAX_ZONE} "
            f"characters, not under .arpa (default: {DEFAULT_ZONE})",
        )
    return zone


@dataclass(frozen=True, slots=True, order=True)
class ContainerName:
    """One container attachment's name: ``<name>.<node>.<zone>`` → ``address``."""

    subnet: IPv4Network  # the node's lease this record belongs to
    container_id: str
    name: str  # a DNS label, lower case
    address: IPv4Address

    def key_part(self) -> str:
        """The key under ``names/``: ``<subnet-key>/<container id>``."""
        return f"{subnet_key_name(self.subnet)}/{self.container_id}"

    def to_json(self) -> str:
        return json.dumps({"IP": str(self.address), "Name": self.name}, sort_keys=True)

    def under(self, subnet: IPv4Network) -> ContainerName | None:
        """This name under the node's current ``subnet`` (None: its address is not in it)."""
        if self.address not in subnet or self.address == subnet.network_address:
            return None
        return ContainerName(subnet, self.container_id, self.name, self.address)


def decode_container(key_part: str, value: bytes) -> ContainerName:
    """The record under ``names/<key_part>``; ``LeaseFormatError`` says what is wrong."""
    subnet_text, sep, container_id = key_part.partition("/")
    if not sep or not is_container_id(container_id):
        raise LeaseFormatError(f"name key {quote(key_part)} is not <subnet-key>/<container id>")
    subnet = parse_subnet_key_name(subnet_text)
    try:
        raw = json_object(value, MAX_CONTAINER_VALUE, f"name {quote(key_part)}")
    except ValueError as exc:
        raise LeaseFormatError(str(exc)) from None
    name, address = raw.get("Name"), raw.get("IP")
    if not isinstance(name, str) or not is_label(name):
        raise LeaseFormatError(f"name {quote(key_part)}: Name {quote(name)} is not a DNS label")
    try:
        ip = IPv4Address(address) if isinstance(address, str) else None
    except ValueError:
        ip = None
    if ip is None or ip not in subnet:
        raise LeaseFormatError(
            f"name {quote(key_part)}: IP {quote(address)} is not an address in {subnet}"
        )
    return ContainerName(subnet, container_id, name.lower(), ip)
