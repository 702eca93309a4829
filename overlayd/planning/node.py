"""One node's whole plan (pure): the single entry point the daemon applies and
``overlayctl plan`` prints.

``plan_node`` composes the planners -- the scope check (``lease_rules.check_scope``), the
topology (``plan_gateway``) or the WireGuard/VXLAN split (``plan_wireguard``), the VXLAN
entries (``Planner``) and the routes through our site's gateway -- so the daemon and the
CLI cannot drift apart. No I/O, clock, randomness or logging here (and no imports that do).

``PlanMemo`` is what one node keeps between calls: the VXLAN ``Planner`` (entries memoised
by record identity, the incremental path of a single lease event) and the scope verdicts
by record identity. A ``plan_node`` call with ``changed`` and a memo gives the same plan as
a full call with the same inputs, or plans in full when it cannot guarantee that.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network

from overlayd.planning.gateway import GatewayPlan, plan_gateway
from overlayd.planning.relay import RelayPlan, apply_relays, choose_relays
from overlayd.planning.vxlan import Plan, Planner, Touched
from overlayd.planning.wireguard import WireGuardPlan, plan_wireguard
from overlayd.values.config import NetworkConfig
from overlayd.values.gateway_state import GatewayClaim
from overlayd.values.kernel_state import KernelState, RouteEntry
from overlayd.values.lease import LeaseRecord
from overlayd.values.lease_rules import check_scope
from overlayd.values.paths import PeerPath

ENTRY_POINT_ROLES = frozenset({"gateway", "mesh"})
"""Roles whose node holds WireGuard peers with other sites (``plan_gateway``)."""


@dataclass(frozen=True)
class NodePlan:
    """Everything one node programs, and what it leaves out and why.

    ``vxlan``: the VXLAN device's routes, neighbours and FDB (routes through our gateway
    included) and the chosen path of each VXLAN peer; empty without VXLAN. ``wireguard``:
    the WireGuard peers (with the pre-shared key: render with ``overlayd.cli.planview``,
    which never shows it), their routes, and ``vxlan_leases``, the leases VXLAN carries.
    ``via_gateway``: the routes to other sites through our site's gateway (members only).
    ``role``: ``plan_gateway``'s role (gateway, member, mesh = every host an entry point,
    waiting = none elected yet); None outside the gateway topology. ``gateway``: our
    site's gateway claim. ``refused``: records the scope check refused, sorted.
    ``touched``: set when the VXLAN side was patched incrementally: the keys that may
    differ from the previous plan (None: planned in full, diff everything). ``relays``:
    the stranded peers and the relay carrying each (``planning/relay.py``).

    The mappings are keyed by subnet (peers), address or MAC, the same whatever the order
    of the input; what renders them (``skipped`` here, ``overlayd.cli.planview``) sorts.
    Kept as mappings, not sorted tuples, so a single lease event among thousands of peers
    costs no sort. The PSK's repr is redacted (``PresharedKey``).
    """

    vxlan: Plan
    wireguard: WireGuardPlan
    via_gateway: Mapping[IPv4Network, RouteEntry] = field(default_factory=dict)
    role: str | None = None
    gateway: GatewayClaim | None = None
    refused: tuple[tuple[IPv4Network, str], ...] = ()
    touched: Touched | None = None
    relays: RelayPlan = field(default_factory=RelayPlan)

    @property
    def vxlan_leases(self) -> Mapping[IPv4Network, LeaseRecord]:
        """The leases the VXLAN side plans (``me`` included)."""
        return self.wireguard.vxlan_leases

    @property
    def peers(self) -> int:
        """How many peers are programmed (VXLAN and WireGuard)."""
        return len(self.vxlan.paths) + len(self.wireguard.peers)

    @property
    def entry_point(self) -> bool:
        """Gateway topology: whether this node peers over WireGuard with other sites."""
        return self.role in ENTRY_POINT_ROLES

    @property
    def skipped(self) -> list[tuple[IPv4Network, str]]:
        """Every peer not programmed (refused, VXLAN- or WireGuard-skipped), sorted."""
        return sorted((*self.vxlan.skipped, *self.wireguard.skipped, *self.refused))

    @property
    def relayed(self) -> dict[IPv4Network, str]:
        """Subnets reached through a relay -> the relay's node name."""
        if not self.relays.applied:
            return {}
        return {s: c.node for s, c in self.relays.chosen.items()}

    @property
    def via(self) -> dict[IPv4Network, str]:
        """Subnets reached through our site's gateway -> the gateway's node name."""
        if self.role != "member" or self.gateway is None:
            return {}
        return dict.fromkeys(self.via_gateway, self.gateway.node)


class PlanMemo:
    """What ``plan_node`` keeps for one node between calls (see the module docstring)."""

    def __init__(self) -> None:
        self.vxlan = Planner()
        self._scope: dict[IPv4Network, tuple[LeaseRecord, str | None]] = {}
        self._refused: frozenset[IPv4Network] = frozenset()

    def scope(self, record: LeaseRecord, network: IPv4Network) -> str | None:
        """``check_scope``, memoised by record identity (the daemon keeps record objects)."""
        hit = self._scope.get(record.subnet)
        if hit is not None and hit[0] is record:
            return hit[1]
        why = check_scope(record, network)
        self._scope[record.subnet] = (record, why)
        return why

    def split(
        self, records: Mapping[IPv4Network, LeaseRecord], network: IPv4Network
    ) -> tuple[Mapping[IPv4Network, LeaseRecord], tuple[tuple[IPv4Network, str], ...]]:
        """The usable records (``records`` itself when none is refused) and the refused."""
        refused = sorted(
            (subnet, why) for subnet, r in records.items() if (why := self.scope(r, network))
        )
        for gone in self._scope.keys() - records.keys():
            del self._scope[gone]
        self._refused = frozenset(s for s, _ in refused)
        if not refused:
            return records, ()
        return {s: r for s, r in records.items() if s not in self._refused}, tuple(refused)

    def may_patch(
        self,
        records: Mapping[IPv4Network, LeaseRecord],
        changed: Collection[IPv4Network],
        network: IPv4Network,
    ) -> bool:
        """Whether a patch keeps ``refused`` as it is: the last full plan refused no record
        and no changed record is refused now (else a full plan settles the list)."""
        if self._refused:
            return False
        return all((r := records.get(s)) is None or self.scope(r, network) is None for s in changed)


def plan_node(
    cfg: NetworkConfig,
    me: LeaseRecord,
    records: Mapping[IPv4Network, LeaseRecord],
    *,
    claims: Mapping[str, GatewayClaim] | None = None,
    paths: Mapping[IPv4Network, PeerPath] | None = None,
    verified: Collection[IPv4Network] = frozenset(),
    created: Mapping[IPv4Network, int] | None = None,
    unguessable: Collection[IPv4Address] = frozenset(),
    memo: PlanMemo | None = None,
    changed: Collection[IPv4Network] | None = None,
    stranded: Collection[IPv4Network] | None = None,
    broken_relays: Collection[tuple[IPv4Network, IPv4Network]] = frozenset(),
) -> NodePlan:
    """``me``'s plan under ``cfg``'s backend and topology.

    ``records``: the lease records by subnet (``me``'s included); ``claims``: the elected
    gateways by site; ``paths``: chosen underlay paths by peer subnet (peers without one
    get ``guess_path``), ``verified``: the subnets whose path probes verified;
    ``created``: etcd create_revision by subnet (the older lease wins a conflict);
    ``unguessable``: addresses never guessed as a path (our etcd endpoints). ``memo``:
    the node's ``PlanMemo`` (a fresh one when None). ``changed``: the subnets changed since
    the previous call with ``memo`` (None: plan everything); VXLAN is then patched in
    place when the backend has no WireGuard side and the change allows it.
    ``stranded``: WireGuard peers with no direct path verified within the grace time (or
    one their WireGuard handshake does not cross), carried by a relay (``broken_relays``:
    (peer, relay) pairs not to use); None: not known (offline), the plan then says which
    relay each WireGuard peer would get. In the gateway topology the pairs are entry
    points (a site's gateway: every subnet it carries goes through the relay).
    """
    memo = memo or PlanMemo()
    network, backend = cfg.network, cfg.backend
    if changed is not None:
        patched = _patch(cfg, me, records, changed, paths, unguessable, memo)
        if patched is not None:
            return patched
    usable, refused = memo.split(records, network)
    topo: GatewayPlan | None = None
    if cfg.topology.uses_gateways:
        topo = plan_gateway(
            cfg, me, usable, claims or {}, paths, verified=verified, created=created,
            unguessable=unguessable,
        )  # fmt: skip
        wireguard = topo.wireguard
    else:
        wireguard = plan_wireguard(
            me, usable, backend, paths, verified=verified, network=network, created=created,
            unguessable=unguessable,
        )  # fmt: skip
    relays = _relays(me, usable, wireguard, stranded, broken_relays)
    wireguard = apply_relays(wireguard, relays, usable)
    if backend.uses_vxlan:
        vxlan = memo.vxlan.plan(me, wireguard.vxlan_leases, paths, network, created, unguessable)
    else:
        vxlan = Plan(KernelState(), {}, ())
    if topo is None:
        return NodePlan(vxlan, wireguard, refused=refused, relays=relays)
    if topo.via_gateway:  # other sites' subnets, through our gateway
        routes = {**vxlan.state.routes, **topo.via_gateway}
        vxlan = replace(vxlan, state=replace(vxlan.state, routes=routes))
    return NodePlan(
        vxlan, wireguard, topo.via_gateway, topo.role, topo.gateway, refused, relays=relays
    )


def _relays(
    me: LeaseRecord,
    records: Mapping[IPv4Network, LeaseRecord],
    wireguard: WireGuardPlan,
    stranded: Collection[IPv4Network] | None,
    broken: Collection[tuple[IPv4Network, IPv4Network]],
) -> RelayPlan:
    """The relay plan of ``plan_node`` (offline: what each WireGuard peer would get)."""
    if stranded is None:
        if not me.relay_rtts:
            return RelayPlan(applied=False)
        found = choose_relays(me, records, wireguard.peers, broken, wireguard.peers)
        return replace(found, none={}, applied=False)
    wg_stranded = [s for s in stranded if s in wireguard.peers]
    return choose_relays(me, records, wg_stranded, broken, wireguard.peers)


def _patch(
    cfg: NetworkConfig,
    me: LeaseRecord,
    records: Mapping[IPv4Network, LeaseRecord],
    changed: Collection[IPv4Network],
    paths: Mapping[IPv4Network, PeerPath] | None,
    unguessable: Collection[IPv4Address],
    memo: PlanMemo,
) -> NodePlan | None:
    """The last plan with only ``changed`` replanned, or None: plan in full. Only for the
    ``vxlan`` backend (every lease is VXLAN's, no WireGuard side, no gateways): the
    WireGuard side is always planned in full, and it decides what VXLAN carries."""
    backend, network = cfg.backend, cfg.network
    if backend.uses_wireguard or not backend.uses_vxlan or cfg.topology.uses_gateways:
        return None
    if not memo.may_patch(records, changed, network):
        return None
    incremental = memo.vxlan.update(me, records, set(changed), paths, network, unguessable)
    if incremental is None:
        return None
    plan, touched = incremental
    return NodePlan(plan, plan_wireguard(me, records, backend), touched=touched)
