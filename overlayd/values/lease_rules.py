"""What a lease record may say (pure): size caps, name rules and underlay address scope.

A record in etcd comes from outside this node; it is programmed into the kernel and
quoted in logs by every daemon. So (docs/etcd-schema.md, "Validation"):

* the raw value is at most ``MAX_VALUE_BYTES`` (checked before it is parsed), every
  string and list is bounded, and what an error message quotes is truncated
  (``overlayd.runtime.logs.quote``);
* ``Node`` and ``Site`` are DNS labels (``is_label``): they will be served as DNS names;
  ``DNSNames`` (aliases) are DNS names (``is_dns_name``), at most ``MAX_DNS_NAMES``;
* an underlay address (``PublicIP``, ``PrivateIPs``, ``PublicIPs``) that is loopback,
  unspecified, multicast, broadcast, reserved (240/4) or link-local refuses the **whole
  record** (``scope_error``), as does one inside the overlay network (``check_scope``,
  which needs the network). A half-trusted record is harder to reason about than a
  refused one, and one clear log line is visible where a silently dropped address is not.

The same rules check our own flags (``own_label``, ``own_addresses``), so a daemon never
publishes a record its peers refuse.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING

from overlayd.values.errors import ConfigError
from overlayd.values.text import quote

if TYPE_CHECKING:  # lease.py imports this module; the record type is only annotated here
    from overlayd.values.lease import LeaseRecord

MAX_VALUE_BYTES = 8192
"""A lease value's size limit. A real record with 16 addresses in each list is ~1.3 KiB."""
MAX_ADDRESSES = 16
"""At most this many ``PrivateIPs`` and this many ``PublicIPs``."""
MAX_RELAY_RTTS = 16
"""At most this many entries in ``RelayRTTs`` (the relays a node measured, docs/nat.md)."""
MAX_RELAY_RTT_MS = 60_000
"""A ``RelayRTTs`` value above this (milliseconds) is not a round trip but a hostile value."""
MAX_ENDPOINTS = 4
"""At most this many ``Endpoints.Probe`` and this many ``Endpoints.WireGuard``."""
MAX_SEEN = 16
"""At most this many ``Seen`` entries (peers seen behind NAT, until they publish it)."""
MAX_NODE_ID = 64
MAX_BACKEND_TYPE = 32
MAX_LABEL = 63
MAX_DNS_NAMES = 16
"""At most this many ``DNSNames`` (aliases) in one lease."""
MAX_DNS_NAME = 200
"""An alias's length limit: with the zone (and a trailing dot) it must fit DNS's 253."""

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_NODE_ID = re.compile(r"[A-Za-z0-9._-]*")
_BACKEND_TYPE = re.compile(r"[a-z0-9+._-]+")
_BROADCAST = IPv4Address("255.255.255.255")


def is_label(text: str) -> bool:
    """A DNS label: 1-63 of [A-Za-z0-9-], no leading or trailing hyphen."""
    return _LABEL.fullmatch(text) is not None


def is_dns_name(text: str) -> bool:
    """A relative DNS name (``peer0.org1``): dot-separated labels, at most ``MAX_DNS_NAME``."""
    return 0 < len(text) <= MAX_DNS_NAME and all(is_label(p) for p in text.split("."))


def is_node_id(text: str) -> bool:
    """A node id: up to ``MAX_NODE_ID`` of [A-Za-z0-9._-] (ours: 32 hex; flannel's: none)."""
    return len(text) <= MAX_NODE_ID and _NODE_ID.fullmatch(text) is not None


def is_backend_type(text: str) -> bool:
    """A backend type name: 1-32 of [a-z0-9+._-]; unknown ones decode, planners skip them."""
    return len(text) <= MAX_BACKEND_TYPE and _BACKEND_TYPE.fullmatch(text) is not None


def relay_rtt_error(value: object) -> str | None:
    """Why ``value`` is not a ``RelayRTTs`` round trip (whole milliseconds), None if it is."""
    if isinstance(value, bool) or not isinstance(value, int):
        return "must be whole milliseconds"
    if not 0 <= value <= MAX_RELAY_RTT_MS:
        return f"must be 0..{MAX_RELAY_RTT_MS} ms"
    return None


def flannel_node_name(public_ip: IPv4Address) -> str:
    """The name of a flannel node (its record has no ``Node``): ``flannel-192-0-2-1``."""
    return "flannel-" + str(public_ip).replace(".", "-")


def scope_error(address: IPv4Address) -> str | None:
    """Why ``address`` can never be a peer's underlay address (None: it can)."""
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_multicast:
        return "multicast"
    if address == _BROADCAST:
        return "broadcast"
    if address.is_reserved:
        return "reserved (240.0.0.0/4)"
    if address.is_link_local:
        return "link-local"
    return None


_NOT_PUBLIC = (
    (IPv4Network("0.0.0.0/8"), "'this network' (0.0.0.0/8)"),
    (IPv4Network("10.0.0.0/8"), "private (RFC 1918)"),
    (IPv4Network("172.16.0.0/12"), "private (RFC 1918)"),
    (IPv4Network("192.168.0.0/16"), "private (RFC 1918)"),
    (IPv4Network("100.64.0.0/10"), "shared (RFC 6598, carrier-grade NAT)"),
    (IPv4Network("192.0.0.0/24"), "IETF protocol assignments (192.0.0.0/24)"),
    (IPv4Network("198.18.0.0/15"), "benchmarking (198.18.0.0/15)"),
)


def public_error(address: IPv4Address) -> str | None:
    """Why ``address`` is not a public unicast address (None: it is), for what a cloud
    metadata service or a STUN server tells us.

    The documentation ranges of RFC 5737 count as public: no cloud hands them out (they
    are routed nowhere), and the test worlds use them as the internet.
    """
    if (why := scope_error(address)) is not None:
        return why
    return next((why for net, why in _NOT_PUBLIC if address in net), None)


def underlay_addresses(record: LeaseRecord) -> tuple[IPv4Address, ...]:
    """Every underlay address a record names: PublicIP, then PrivateIPs, then PublicIPs,
    then the unconfirmed Candidates."""
    return (record.public_ip, *record.private_ips, *record.public_ips, *record.candidates)


def check_scope(record: LeaseRecord, network: IPv4Network) -> str | None:
    """Why ``record`` must be refused in ``network`` (None: it may be used).

    An underlay address inside the overlay network would send encapsulated traffic back
    into the overlay. The network-independent rules (``scope_error``) already refused the
    record when it was decoded.
    """
    for address in underlay_addresses(record):
        if address in network:
            return f"underlay address {address} is inside the overlay network {network}"
    seen = [e for s in record.seen for e in (s.probe, s.wireguard) if e is not None]
    for endpoint in (*record.endpoints.probe, *record.endpoints.wireguard, *seen):
        if endpoint.address in network:
            return f"endpoint {endpoint} is inside the overlay network {network}"
    return None


# -- our own flags ------------------------------------------------------------------------


def own_label(value: str, flag: str) -> str:
    """``value`` of ``flag`` if it is a DNS label, else a ``ConfigError`` naming the flag."""
    if not is_label(value):
        raise ConfigError(
            f"{flag} {quote(value)} is not a DNS label",
            hint="use 1-63 letters, digits and hyphens, not starting or ending with a hyphen",
        )
    return value


def own_dns_names(values: Iterable[str], flag: str) -> tuple[str, ...]:
    """The aliases given with ``flag``, lower-cased, sorted and without repeats, or a
    ``ConfigError`` naming the flag (a bad name, or more than ``MAX_DNS_NAMES``)."""
    names = set()
    for value in values:
        name = value.strip().rstrip(".").lower()
        if not is_dns_name(name):
            raise ConfigError(
                f"{flag} {quote(value)} is not a DNS name",
                hint="labels of 1-63 letters, digits and hyphens joined by dots, "
                f"at most {MAX_DNS_NAME} characters, relative to the zone (e.g. peer0.org1)",
            )
        names.add(name)
    if len(names) > MAX_DNS_NAMES:
        raise ConfigError(f"at most {MAX_DNS_NAMES} {flag} names, got {len(names)}")
    return tuple(sorted(names))


def default_node_name(hostname: str) -> str:
    """The node name from the host name: its first label (``web-1.example.com`` -> ``web-1``).

    ``ConfigError`` if even that is not a DNS label: the operator must pick a name.
    """
    first = hostname.split(".", 1)[0]
    if not is_label(first):
        raise ConfigError(
            f"the host name {quote(hostname)} does not give a valid node name",
            hint="give one with --node-name (1-63 letters, digits and hyphens)",
        )
    return first


def own_addresses(addresses: Iterable[IPv4Address], flag: str) -> tuple[IPv4Address, ...]:
    """``addresses`` given with ``flag``, or a ``ConfigError`` naming the flag."""
    out = tuple(addresses)
    for address in out:
        if (why := scope_error(address)) is not None:
            raise ConfigError(
                f"{flag} {address} is {why}: peers would refuse this node's lease",
                hint="give an address peers can reach this node at",
            )
    if len(out) > MAX_ADDRESSES:
        raise ConfigError(f"at most {MAX_ADDRESSES} {flag} addresses, got {len(out)}")
    return out


def publishable(addresses: Iterable[IPv4Address], network: IPv4Network) -> tuple[IPv4Address, ...]:
    """The first ``MAX_ADDRESSES`` of ``addresses`` that peers accept as public addresses
    (``--public-ip auto`` publishes what peers observed: that must not get our lease refused)."""
    ok = [a for a in addresses if scope_error(a) is None and a not in network]
    return tuple(ok[:MAX_ADDRESSES])


def check_own_record(record: LeaseRecord, network: IPv4Network) -> None:
    """``ConfigError`` when peers would refuse our own ``record`` in ``network``."""
    for address in record.public_ips:
        if address in network:
            raise ConfigError(
                f"--public-ip {address} is inside the overlay network {network}",
                hint="give an underlay address, outside the overlay network",
            )
    for address in underlay_addresses(record):
        why = scope_error(address)
        if why is None and address in network:
            why = f"inside the overlay network {network}"
        if why is not None:
            raise ConfigError(
                f"the underlay address {address} is {why}: peers would refuse this node's lease",
                hint="pick the underlay interface with --iface",
            )
