"""Relays (pure): which relay carries a pair of nodes that have no direct path, and how.

A *relay* is a node whose lease says ``Relay: true`` (``overlayd --relay``): it has a public
address and forwards between its WireGuard peers. Every node publishes, in its lease's
``RelayRTTs``, its round trip to each relay its probes verified (``rtts_to_publish``). A pair
(``me``, ``peer``) that the daemon finds *stranded* -- no direct path verified within the
grace time, or a verified one that WireGuard's handshake does not cross -- is carried by
the relay with the lowest combined round trip (``me``'s published RTT + ``peer``'s
published RTT), ties by relay subnet (``choose_relays``).
Both ends compute this from the same two leases, so they pick the same relay without
talking to each other; the relay itself needs no per-pair state: it already holds both as
WireGuard peers and routes each one's subnet to it.

Stability: the choice is a function of published values only, and a node republishes an
RTT only when it moved by more than ``RelayParams`` allows (jitter never moves a pair). A
relay that stops forwarding for the pair (the daemon's data-plane check) is ``broken`` for
it: the next relay takes over, or the peer is left with no path and the reason.

``apply_relays`` rewrites a WireGuard plan: the relayed peer's AllowedIPs (its subnet; for
a remote gateway, every subnet of its site) go into the relay's and are routed via the
relay's overlay address; the peer's own WireGuard peer keeps its endpoint but no
AllowedIPs (a subnet cannot be the AllowedIPs of two peers), so its handshakes go on testing
the direct path. Both legs are WireGuard.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network

from overlayd.planning.wireguard import WireGuardPlan
from overlayd.values.kernel_state import RouteEntry
from overlayd.values.lease import LeaseRecord
from overlayd.values.lease_rules import MAX_RELAY_RTT_MS, MAX_RELAY_RTTS

RelayRtts = tuple[tuple[IPv4Network, int], ...]


@dataclass(frozen=True)
class RelayParams:
    """When a measured RTT replaces the published one: it moved by more than ``margin_ms``
    and by more than ``margin_ratio`` of the published value. Wide on purpose: what
    matters is a relay next door against one across an ocean, and every republished value
    may move pairs (a 3 ms path whose average a few delayed probes pushed to 20 ms must
    not). ``limit``: at most this many relays are published (the nearest)."""

    margin_ms: int = 20
    margin_ratio: float = 0.5
    limit: int = MAX_RELAY_RTTS


@dataclass(frozen=True)
class RelayChoice:
    """The relay that carries a pair: its subnet, node name and the combined RTT (ms)."""

    relay: IPv4Network
    node: str
    rtt_ms: int


@dataclass(frozen=True)
class RelayPlan:
    """``chosen``: stranded peers -> their relay; ``none``: stranded peers no relay can
    carry -> why. ``applied``: False when the plan only says what would happen (the
    offline ``overlayctl plan``, which does not know which pairs are stranded)."""

    chosen: Mapping[IPv4Network, RelayChoice] = field(default_factory=dict)
    none: Mapping[IPv4Network, str] = field(default_factory=dict)
    applied: bool = True


def _order(subnet: IPv4Network) -> tuple[int, int]:
    return int(subnet.network_address), subnet.prefixlen


def rtts_to_publish(
    published: RelayRtts,
    measured: Mapping[IPv4Network, float],
    params: RelayParams = RelayParams(),
) -> RelayRtts:
    """What our lease's ``RelayRTTs`` should say, given what it says (``published``) and
    the round trips (ms) our probes measure now to the relays they verified.

    A relay no longer verified is dropped at once, a new one added at once; a published
    value is kept while the measurement stays within the margins (hysteresis). The
    ``limit`` nearest relays are kept, ties by subnet; sorted by subnet."""
    old = dict(published)
    out: dict[IPv4Network, int] = {}
    for subnet, rtt in measured.items():
        ms = min(MAX_RELAY_RTT_MS, max(0, round(rtt)))
        before = old.get(subnet)
        if before is not None and (
            abs(ms - before) <= params.margin_ms or abs(ms - before) <= params.margin_ratio * before
        ):
            ms = before
        out[subnet] = ms
    nearest = sorted(out.items(), key=lambda item: (item[1], _order(item[0])))[: params.limit]
    return tuple(sorted(nearest, key=lambda item: _order(item[0])))


def choose_relays(
    me: LeaseRecord,
    records: Mapping[IPv4Network, LeaseRecord],
    stranded: Collection[IPv4Network],
    broken: Collection[tuple[IPv4Network, IPv4Network]] = frozenset(),
    reachable: Collection[IPv4Network] | None = None,
) -> RelayPlan:
    """The relay of each ``stranded`` peer (see the module docstring).

    ``broken``: (peer, relay) pairs whose relay stopped forwarding for that peer.
    ``reachable``: the relays we hold as WireGuard peers (None: any); a relay that is
    not one cannot carry anything for us. A relay is never the pair's own end.

    A pair one of whose ends is a relay is never relayed: a relay has a public address
    of its own, so the other end reaches it directly (and dials it, behind NAT) even when
    the relay's probes cannot reach that end. Were the relay to send through a third node
    meanwhile, the ends would disagree and WireGuard at the other end would drop what the
    third node forwards. Both ends read ``Relay`` from the same leases, so they agree.
    """
    mine = dict(me.relay_rtts)
    chosen: dict[IPv4Network, RelayChoice] = {}
    none: dict[IPv4Network, str] = {}
    if me.relay:
        return RelayPlan()
    for subnet in sorted(stranded, key=_order):
        peer = records.get(subnet)
        if peer is None or peer.relay:
            continue
        theirs = dict(peer.relay_rtts)
        best: tuple[int, tuple[int, int], RelayChoice] | None = None
        failed: list[str] = []
        for relay, my_rtt in mine.items():
            record = records.get(relay)
            if (
                record is None
                or not record.relay
                or relay in (me.subnet, subnet)
                or record.node_id in (me.node_id, peer.node_id)
                or relay not in theirs
                or (reachable is not None and relay not in reachable)
            ):
                continue
            if (subnet, relay) in broken:
                failed.append(record.node)
                continue
            total = my_rtt + theirs[relay]
            candidate = (total, _order(relay), RelayChoice(relay, record.node, total))
            if best is None or candidate[:2] < best[:2]:
                best = candidate
        if best is not None:
            chosen[subnet] = best[2]
        else:
            none[subnet] = _no_relay_reason(peer, sorted(failed))
    return RelayPlan(chosen, none)


def _no_relay_reason(peer: LeaseRecord, failed: list[str]) -> str:
    if failed:
        return (
            f"no direct path verified, and relay {', '.join(failed)} stopped forwarding "
            f"for {peer.node}; no other relay reaches both"
        )
    return f"no direct path verified, and no relay that both this node and {peer.node} reach"


def apply_relays(
    plan: WireGuardPlan, relays: RelayPlan, records: Mapping[IPv4Network, LeaseRecord]
) -> WireGuardPlan:
    """``plan`` with each chosen pair carried by its relay: the peer's AllowedIPs in the
    relay's and routed via the relay's overlay address. The peer's own WireGuard peer
    stays, with no AllowedIPs (a subnet cannot be the AllowedIPs of two peers) but with
    its endpoint: its handshakes go on testing the direct path, and one that completes
    lets the pair leave the relay (overlayd/agent/relay_keeper.py). Pairs whose relay is
    not a peer of ``plan`` stay as they are."""
    if not relays.applied or not relays.chosen:
        return plan
    peers, routes, paths = dict(plan.peers), dict(plan.routes), dict(plan.paths)
    dial_in = list(plan.dial_in)
    extra: dict[IPv4Network, list[IPv4Network]] = {}
    for subnet, choice in relays.chosen.items():
        # a relay that is itself relayed cannot carry anyone (it is no peer of ours then)
        if choice.relay in relays.chosen or choice.relay not in peers or subnet not in peers:
            continue
        carried = peers[subnet].allowed_ips
        peers[subnet] = replace(peers[subnet], allowed_ips=())
        paths.pop(subnet, None)
        if subnet in dial_in:
            dial_in.remove(subnet)
        extra.setdefault(choice.relay, []).extend(carried)
        via = records[choice.relay].overlay_ip
        routes.update((s, RouteEntry(s, via)) for s in carried)
    for relay, subnets in extra.items():
        peers[relay] = replace(peers[relay], allowed_ips=(*peers[relay].allowed_ips, *subnets))
    return replace(plan, peers=peers, routes=routes, paths=paths, dial_in=tuple(dial_in))
