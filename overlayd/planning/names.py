"""The network's DNS zone as a value, and the answer to one question (pure).

``build_zone`` (overlayd/planning/zone_builder.py) turns the lease table (and the
container records) into a ``Zone``:
``<node>.<zone>`` and ``<node>.<site>.<zone>`` for every node, ``<container>.<node>.<zone>``
for every container record whose address lies in its node's subnet, and every alias
(``DNSNames``) as ``<alias>.<zone>``; PTR records for the addresses. When several nodes
claim one name, the winner is deterministic: node names before site names before
container names before aliases, then the older lease (etcd create revision), then the
node name and id. A lost name is a ``Conflict`` (the agent warns); every node keeps its
own node name unless another node has the same one.

``resolve`` answers one question from a ``Zone`` as the DNS would: records, NXDOMAIN for
an unknown name in the zone, NOERROR without records (NODATA) for a name without records
of that type, REFUSED for any name outside the zone and the overlay's reverse zone. The
wire format is the adapter's (overlayd/dns/). docs/dns.md describes the zone.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from overlayd.values.names import TTL

REVERSE_SUFFIX = "in-addr.arpa"


class Kind(enum.IntEnum):
    """What a name is; the lower value wins a name claimed twice."""

    NODE = 0
    SITE = 1
    CONTAINER = 2
    ALIAS = 3


class RType(enum.Enum):
    """The record types the zone holds (and the adapter renders)."""

    A = "A"
    PTR = "PTR"
    NS = "NS"
    SOA = "SOA"


class Rcode(enum.Enum):
    NOERROR = "NOERROR"
    NXDOMAIN = "NXDOMAIN"
    REFUSED = "REFUSED"


@dataclass(frozen=True, slots=True, order=True)
class NameEntry:
    """One name of the zone and whose it is."""

    name: str  # fully qualified, lower case, no trailing dot
    address: IPv4Address
    kind: Kind
    node: str


@dataclass(frozen=True, slots=True, order=True)
class Conflict:
    """``name`` was claimed by several nodes; ``winner`` serves it, ``losers`` do not."""

    name: str
    winner: str
    losers: tuple[str, ...]


@dataclass(frozen=True)
class Zone:
    """Everything a responder answers from; the mappings are not changed after building."""

    origin: str  # e.g. overlay.internal
    reverse_origin: str  # the overlay network's reverse zone, e.g. 244.10.in-addr.arpa
    network: IPv4Network
    ns: str  # the name of the node serving this zone (its own node name)
    serial: int
    named: Mapping[str, NameEntry]  # every name with an address, and whose it is
    conflicts: tuple[Conflict, ...]  # sorted by name
    reverse: Mapping[IPv4Address, str]
    nodes: frozenset[str]  # every name that exists (empty non-terminals too)

    @property
    def entries(self) -> tuple[NameEntry, ...]:
        """Every name, sorted (for listings and the hosts file; answers use ``named``)."""
        return tuple(sorted(self.named.values()))

    @property
    def soa(self) -> str:
        """The SOA record's data, in zone-file form (the responder's own name as master)."""
        return f"{self.ns}. hostmaster.{self.origin}. {self.serial} {TTL} {TTL} {TTL} {TTL}"


@dataclass(frozen=True, slots=True)
class Record:
    name: str
    rtype: RType
    data: str  # zone-file form: an address, a target name with its dot, or the SOA


@dataclass(frozen=True, slots=True)
class Answer:
    rcode: Rcode
    answer: tuple[Record, ...] = ()
    authority: tuple[Record, ...] = ()


def reverse_origin(network: IPv4Network) -> str:
    """The reverse zone covering ``network``, at an octet boundary (``10.244.0.0/16`` →
    ``244.10.in-addr.arpa``; a /12 is covered by its /8's)."""
    octets = str(network.network_address).split(".")[: network.prefixlen // 8]
    return ".".join([*reversed(octets), REVERSE_SUFFIX])


def reverse_name(address: IPv4Address) -> str:
    """``10.244.3.0`` → ``0.3.244.10.in-addr.arpa`` (the name its PTR record has)."""
    return ".".join([*reversed(str(address).split(".")), REVERSE_SUFFIX])


def _under(name: str, origin: str) -> bool:
    return name == origin or name.endswith("." + origin)


def _parse_reverse(name: str) -> IPv4Address | None:
    """The address a full ``d.c.b.a.in-addr.arpa`` name stands for (None: not one)."""
    labels = name[: -len(REVERSE_SUFFIX) - 1].split(".") if name != REVERSE_SUFFIX else []
    if len(labels) != 4 or not all(p.isascii() and p.isdigit() and len(p) <= 3 for p in labels):
        return None
    if any(p != str(int(p)) or int(p) > 255 for p in labels):
        return None
    return IPv4Address(".".join(reversed(labels)))


def resolve(zone: Zone, qname: str, rtype: RType | None) -> Answer:
    """The answer to ``qname`` (any case, trailing dot or not) of type ``rtype`` (None:
    a type the zone holds none of, e.g. AAAA or TXT)."""
    name = qname.rstrip(".").lower()
    if _under(name, zone.origin):
        return _forward(zone, name, rtype)
    if _under(name, zone.reverse_origin):
        return _reverse(zone, name, rtype)
    return Answer(Rcode.REFUSED)


def _negative(zone: Zone, origin: str, rcode: Rcode) -> Answer:
    return Answer(rcode, authority=(Record(origin, RType.SOA, zone.soa),))


def _apex(zone: Zone, origin: str, rtype: RType | None) -> Answer:
    if rtype is RType.SOA:
        return Answer(Rcode.NOERROR, (Record(origin, RType.SOA, zone.soa),))
    if rtype is RType.NS:
        return Answer(Rcode.NOERROR, (Record(origin, RType.NS, zone.ns + "."),))
    return _negative(zone, origin, Rcode.NOERROR)


def _forward(zone: Zone, name: str, rtype: RType | None) -> Answer:
    if name == zone.origin:
        return _apex(zone, name, rtype)
    entry = zone.named.get(name)
    if entry is not None and rtype is RType.A:
        return Answer(Rcode.NOERROR, (Record(name, RType.A, str(entry.address)),))
    if name in zone.nodes:
        return _negative(zone, zone.origin, Rcode.NOERROR)
    return _negative(zone, zone.origin, Rcode.NXDOMAIN)


def _reverse(zone: Zone, name: str, rtype: RType | None) -> Answer:
    if name == zone.reverse_origin:
        return _apex(zone, name, rtype)
    address = _parse_reverse(name)
    if address is not None and address not in zone.network:
        return Answer(Rcode.REFUSED)  # in our /8 or /16 reverse zone, but not the overlay's
    target = zone.reverse.get(address) if address is not None else None
    if target is None:
        return _negative(zone, zone.reverse_origin, Rcode.NXDOMAIN)
    if rtype is RType.PTR:
        return Answer(Rcode.NOERROR, (Record(name, RType.PTR, target + "."),))
    return _negative(zone, zone.reverse_origin, Rcode.NOERROR)
