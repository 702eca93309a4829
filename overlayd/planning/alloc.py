"""Pure subnet allocation: which subnets a node should try to claim, in which order.

The etcd adapter turns each ``Claim`` into one atomic transaction; this module only
decides. Free subnets are picked at random (seeded by the caller) so nodes starting
together rarely race for the same subnet.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Protocol

from overlayd.values.config import NetworkConfig
from overlayd.values.lease import LeaseRecord

# Below this share of taken subnets, random probing finds a free one in a few tries;
# above it, enumerate the free ones instead.
_PROBE_LIMIT = 0.5
_PROBE_TRIES = 64


class Rng(Protocol):
    """The randomness allocation needs (``random.Random`` has it; the caller seeds it)."""

    def randrange(self, stop: int, /) -> int: ...


class ClaimKind(enum.Enum):
    OWN_LEASE = "own-lease"  # our lease is still in the store: rebind it to a fresh etcd lease
    RESERVED = "reserved"  # a permanent reservation for our node name
    REMEMBERED = "remembered"  # the subnet we held before (state dir), if still free
    FREE = "free"  # any free subnet


@dataclass(frozen=True)
class Claim:
    subnet: IPv4Network
    kind: ClaimKind


def choose_free(cfg: NetworkConfig, taken: Collection[IPv4Network], rng: Rng) -> IPv4Network | None:
    """A random allocatable subnet not in ``taken``; None when the pool is exhausted."""
    count = cfg.subnet_count()
    taken_in_pool = {s for s in taken if cfg.is_allocatable(s)}
    if len(taken_in_pool) >= count:
        return None
    if len(taken_in_pool) < count * _PROBE_LIMIT:
        for _ in range(_PROBE_TRIES):
            candidate = cfg.subnet_at(rng.randrange(count))
            if candidate not in taken_in_pool:
                return candidate
    free = [i for i in range(count) if cfg.subnet_at(i) not in taken_in_pool]
    return cfg.subnet_at(free[rng.randrange(len(free))]) if free else None


def plan_claims(
    cfg: NetworkConfig,
    *,
    node: str,
    node_id: str,
    leases: Mapping[IPv4Network, LeaseRecord | None],
    reservations: Mapping[IPv4Network, str],
    remembered: IPv4Network | None,
    rng: Rng,
) -> list[Claim]:
    """Claims to try in order: our live lease, our reservation, our previous subnet, a free one.

    ``leases`` are the occupied subnets with their records (None: an undecodable record,
    which still occupies its subnet); ``reservations`` map subnet -> node name.
    Identity is node name *and* node id: a host that lost its state dir is a new node.
    """
    claims: list[Claim] = []
    for subnet, rec in sorted(leases.items(), key=lambda item: item[0]):
        if rec and rec.node == node and rec.node_id == node_id and cfg.is_allocatable(subnet):
            claims.append(Claim(subnet, ClaimKind.OWN_LEASE))
    for subnet, owner in sorted(reservations.items()):
        if owner == node and subnet not in leases and cfg.is_allocatable(subnet):
            claims.append(Claim(subnet, ClaimKind.RESERVED))
    reserved_for_others = {s for s, owner in reservations.items() if owner != node}
    if (
        remembered is not None
        and cfg.is_allocatable(remembered)
        and remembered not in leases
        and remembered not in reserved_for_others
    ):
        claims.append(Claim(remembered, ClaimKind.REMEMBERED))
    if not any(c.kind is not ClaimKind.FREE for c in claims):
        free = choose_free(cfg, set(leases) | reserved_for_others, rng)
        if free is not None:
            claims.append(Claim(free, ClaimKind.FREE))
    return claims
