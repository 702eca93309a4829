"""Building the ``Zone`` (overlayd/planning/names.py) from the leases, again after changes.

``ZoneBuilder.update`` takes the whole lease table and container list each time, but
recomputes only the names of subnets whose record (by identity: the lease fold keeps the
object of an unchanged lease), create revision or containers changed, so a lease write
at 5,000 nodes costs a scan and a few names, not a rebuild (``scripts/bench_dns_visibility.py``).
``build_zone`` is one ``update`` of a fresh builder: the result is the same either way
(tests/unit/test_names_zone.py checks it).

Who wins a name claimed twice: node names before site names before container names
before aliases, then the older lease (etcd create revision), then the node name and id.
Pure: no I/O, deterministic.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network

from overlayd.planning.names import Conflict, Kind, NameEntry, Zone, reverse_origin
from overlayd.values.lease import LeaseRecord
from overlayd.values.names import ContainerName

# (kind, created, node, node_id, address): a tuple, so the lowest claim is the winner
_Claim = tuple[Kind, int, str, str, IPv4Address]
# what a subnet's claims were made from: its record (compared by identity), its create
# revision, its containers
_Source = tuple[LeaseRecord | None, int, tuple[ContainerName, ...]]


def _key(subnet: IPv4Network) -> int:
    """A subnet as one integer: its address and its length."""
    return int(subnet.network_address) << 6 | subnet.prefixlen


def _made(subnet: IPv4Network, source: _Source, suffix: str) -> list[tuple[str, _Claim]]:
    """The names one subnet's lease and containers claim."""
    rec, when, containers = source
    if rec is None:
        return []  # containers of a subnet nobody leases (its node is gone) name nothing
    node, address = rec.node.lower(), rec.overlay_ip
    out = [
        (f"{name}{suffix}", (kind, when, rec.node, rec.node_id, address))
        for kind, name in (
            (Kind.NODE, node),
            (Kind.SITE, f"{node}.{rec.site.lower()}"),
            *((Kind.ALIAS, alias) for alias in rec.dns_names),
        )
    ]
    for ctr in containers:  # an address outside the subnet, or the node's own, names nothing
        if ctr.address in subnet and ctr.address != address:
            claim = (Kind.CONTAINER, when, rec.node, rec.node_id, ctr.address)
            out.append((f"{ctr.name}.{node}{suffix}", claim))
    return out


class ZoneBuilder:
    """The zone ``origin`` of ``network`` as the node named ``ns`` serves it, kept current."""

    def __init__(self, origin: str, network: IPv4Network, ns: str) -> None:
        self._origin, self._network, self._ns = origin, network, ns.lower()
        self._suffix = "." + origin
        # by subnet (as an integer: ``_key``)
        self._sources: dict[int, _Source] = {}
        self._subnets: dict[int, IPv4Network] = {}
        self._names_of: dict[int, list[tuple[str, _Claim]]] = {}
        self._claims: dict[str, dict[int, _Claim]] = {}  # by name, then by subnet
        self._named: dict[str, NameEntry] = {}
        self._conflicts: dict[str, Conflict] = {}
        self._at: dict[IPv4Address, set[str]] = {}  # the names won at each address
        self._reverse: dict[IPv4Address, str] = {}
        self._above: dict[str, int] = {}  # empty non-terminals: how many names lie below

    def update(
        self,
        records: Mapping[IPv4Network, LeaseRecord],
        created: Mapping[IPv4Network, int],
        containers: Iterable[ContainerName] = (),
        serial: int = 1,
    ) -> Zone:
        """The zone for these records, created revisions and container names.

        A subnet whose record is the object of the last update (and whose containers are
        the same) is skipped: its create revision cannot have changed, since a recreated
        key decodes to a new object. Subnets are keyed by an integer here (``_key``):
        hashing thousands of ``IPv4Network`` objects per update would cost more than the
        rest (their hash is computed in Python, every time).
        """
        grouped: dict[int, list[ContainerName]] = defaultdict(list)
        for ctr in containers:
            grouped[_key(ctr.subnet)].append(ctr)
        touched: set[str] = set()
        seen: set[int] = set()
        for subnet, rec in records.items():
            key = _key(subnet)
            seen.add(key)
            old = self._sources.get(key)
            boxed = tuple(sorted(grouped[key])) if key in grouped else ()
            if old is None or old[0] is not rec or old[2] != boxed:
                self._replace(key, subnet, (rec, created.get(subnet, 0), boxed), touched)
        for key in [k for k in self._sources if k not in seen]:  # leases gone
            boxed = tuple(sorted(grouped[key])) if key in grouped else ()
            if self._sources[key][0] is not None or self._sources[key][2] != boxed:
                self._replace(key, self._subnets[key], (None, 0, boxed), touched)
        for key in grouped.keys() - seen - self._sources.keys():  # containers without a lease
            ctrs = tuple(sorted(grouped[key]))
            self._replace(key, ctrs[0].subnet, (None, 0, ctrs), touched)
        moved: set[IPv4Address] = set()
        for name in touched:
            moved |= self._decide(name)
        for address in moved:
            self._pick_reverse(address)
        return self._zone(serial)

    def _replace(self, key: int, subnet: IPv4Network, source: _Source, touched: set[str]) -> None:
        for name, _ in self._names_of.pop(key, ()):
            self._claims[name].pop(key, None)
            touched.add(name)
        if source[0] is None and not source[2]:
            self._sources.pop(key, None)
            self._subnets.pop(key, None)
            return
        self._sources[key], self._subnets[key] = source, subnet
        made = _made(subnet, source, self._suffix)
        self._names_of[key] = made
        for name, claim in made:
            held = self._claims.setdefault(name, {})
            # one subnet claiming a name twice (an alias equal to its own name): the best
            held[key] = min(claim, held.get(key, claim))
            touched.add(name)

    def _decide(self, name: str) -> set[IPv4Address]:
        """The winner of ``name`` among its claims now; the addresses whose PTR may change."""
        moved = set()
        old = self._named.pop(name, None)
        if old is not None:
            self._at[old.address].discard(name)
            moved.add(old.address)
            self._count_above(name, -1)
        self._conflicts.pop(name, None)
        claims = self._claims.get(name)
        if not claims:
            self._claims.pop(name, None)
            return moved
        kind, _, node, node_id, address = min(claims.values())
        moved.add(address)
        self._named[name] = NameEntry(name, address, kind, node)
        self._at.setdefault(address, set()).add(name)
        self._count_above(name, 1)
        losers = sorted({c[2] for c in claims.values() if (c[2], c[3]) != (node, node_id)})
        if losers:
            self._conflicts[name] = Conflict(name, node, tuple(losers))
        return moved

    def _pick_reverse(self, address: IPv4Address) -> None:
        """The PTR of ``address``: the best kind of name won there (a node's own first)."""
        names = self._at.get(address)
        if not names:
            self._at.pop(address, None)
            self._reverse.pop(address, None)
            return
        best = min(names, key=lambda n: (self._named[n].kind, n))
        self._reverse[address] = best

    def _count_above(self, name: str, step: int) -> None:
        labels = name[: -len(self._suffix)].split(".")
        for i in range(1, len(labels)):
            above = ".".join(labels[i:]) + self._suffix
            count = self._above.get(above, 0) + step
            if count:
                self._above[above] = count
            else:
                self._above.pop(above, None)

    def _zone(self, serial: int) -> Zone:
        return Zone(
            origin=self._origin,
            reverse_origin=reverse_origin(self._network),
            network=self._network,
            ns=f"{self._ns}{self._suffix}",
            serial=serial % (1 << 32),
            named=dict(self._named),
            conflicts=tuple(sorted(self._conflicts.values())),
            reverse=dict(self._reverse),
            nodes=frozenset((self._origin, *self._named, *self._above)),
        )


def build_zone(
    origin: str,
    network: IPv4Network,
    ns: str,
    records: Mapping[IPv4Network, LeaseRecord],
    created: Mapping[IPv4Network, int],
    containers: Iterable[ContainerName] = (),
    serial: int = 1,
) -> Zone:
    """The zone ``origin`` of ``network`` as the node named ``ns`` serves it."""
    return ZoneBuilder(origin, network, ns).update(records, created, containers, serial)
