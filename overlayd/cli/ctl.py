"""``overlayctl``: inspect and manage the network config, leases and plans in etcd."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time
import urllib.request
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, TypeVar

import click

from overlayd.cleartext import FIX as PLAIN_VXLAN_FIX
from overlayd.cli.common import etcd_options, etcd_settings, friendly_errors
from overlayd.cli.planview import node_plan, wireguard_json, wireguard_lines
from overlayd.config import VXLAN, VXLAN_WIREGUARD, NetworkConfig, parse_backend, parse_config
from overlayd.errors import (
    ConfigError,
    ConfigMissingError,
    DaemonUnreachableError,
    LeaseFormatError,
    NotFoundError,
)
from overlayd.gateway_state import GatewayState
from overlayd.lease import parse_subnet_arg
from overlayd.store import EtcdStore, Snapshot, StoredLease

T = TypeVar("T")


def _run(ctx: click.Context, fn: Callable[[EtcdStore], Awaitable[T]]) -> T:
    async def go() -> T:
        store = EtcdStore(ctx.obj)
        await store.connect()
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(go())


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@click.group()
@etcd_options
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.pass_context
def main(
    ctx: click.Context,
    etcd_endpoints: str,
    etcd_prefix: str,
    etcd_cafile: Path | None,
    etcd_certfile: Path | None,
    etcd_keyfile: Path | None,
    debug: bool,
) -> None:
    """Inspect and manage an overlayd network."""
    ctx.obj = etcd_settings(etcd_endpoints, etcd_prefix, etcd_cafile, etcd_certfile, etcd_keyfile)


# -- network ---------------------------------------------------------------------------


@main.group()
def network() -> None:
    """The network config."""


@network.command("init")
@click.option("--network", "net", required=True, help="Overlay network, e.g. 10.244.0.0/16.")
@click.option("--subnet-len", type=int, default=None, help="Per-node subnet length.")
@click.option("--subnet-min", default=None)
@click.option("--subnet-max", default=None)
@click.option(
    "--backend",
    # the safe choice for networks that span sites (docs/backends.md); a config written
    # without Backend (as flannel's) still means vxlan, so flannel networks read as-is
    # keep running as they did
    default=VXLAN_WIREGUARD,
    show_default=True,
    help="vxlan+wireguard: VXLAN inside a site, WireGuard between sites; vxlan: no "
    "encryption anywhere; wireguard: WireGuard to every peer.",
)
@click.option("--vni", type=int, default=None)
@click.option("--port", type=int, default=None)
@click.option("--mtu", type=int, default=None)
@click.option("--listen-port", type=int, default=None, help="WireGuard port (wireguard backends).")
@click.option(
    "--keepalive", type=int, default=None, help="WireGuard PersistentKeepaliveInterval, seconds."
)
@click.option(
    "--topology",
    type=click.Choice(["mesh", "gateway"]),
    default=None,
    help="Full mesh, or one elected gateway per site (needs --backend vxlan+wireguard).",
)
@click.option("--site-mode", multiple=True, metavar="SITE=MODE", help="Per-site topology mode.")
@click.option("--force", is_flag=True, help="Replace an existing config.")
@click.pass_context
@friendly_errors
def network_init(
    ctx: click.Context,
    net: str,
    subnet_len: int | None,
    subnet_min: str | None,
    subnet_max: str | None,
    backend: str,
    vni: int | None,
    port: int | None,
    mtu: int | None,
    listen_port: int | None,
    keepalive: int | None,
    topology: str | None,
    site_mode: tuple[str, ...],
    force: bool,
) -> None:
    """Write the network config (validated first)."""
    raw: dict[str, Any] = {"Network": net}
    for key, value in (
        ("SubnetLen", subnet_len),
        ("SubnetMin", subnet_min),
        ("SubnetMax", subnet_max),
    ):
        if value is not None:
            raw[key] = value
    back: dict[str, Any] = {"Type": backend}
    for key, value in (
        ("VNI", vni),
        ("Port", port),
        ("MTU", mtu),
        ("ListenPort", listen_port),
        ("PersistentKeepaliveInterval", keepalive),
    ):
        if value is not None:
            back[key] = value
    parse_backend(back)
    raw["Backend"] = back
    if topology is not None or site_mode:
        sites = dict(item.partition("=")[::2] for item in site_mode)
        raw["Topology"] = {"Mode": topology or "mesh", "Sites": sites}
    cfg = parse_config(json.dumps(raw))

    async def go(store: EtcdStore) -> None:
        if not force:
            try:
                await store.get_config_text()
            except ConfigMissingError:
                pass
            else:
                raise ConfigError(
                    f"a network config already exists at {store.prefix}/config",
                    hint="use --force to replace it (leases of the old network stay until revoked)",
                )
        await store.put_config(cfg)

    _run(ctx, go)
    click.echo(cfg.to_json(redact=True))
    if cfg.backend.type == VXLAN:
        click.echo(
            "note: backend vxlan neither encrypts nor authenticates traffic between sites; "
            f"if this network spans sites, {PLAIN_VXLAN_FIX}",
            err=True,
        )


@network.command("show")
@click.pass_context
@friendly_errors
def network_show(ctx: click.Context) -> None:
    """Print the network config with defaults filled in."""
    text = _run(ctx, lambda s: s.get_config_text())
    click.echo(parse_config(text).to_json(redact=True))


# -- leases ----------------------------------------------------------------------------


@main.group()
def leases() -> None:
    """Subnet leases and reservations."""


async def _leases_with_ttl(store: EtcdStore) -> list[tuple[StoredLease, int | None]]:
    snapshot = await store.list_leases()
    out = []
    for stored in sorted(snapshot.leases, key=lambda s: s.subnet):
        ttl = await store.ttl_left(stored.lease_id) if stored.lease_id else None
        out.append((stored, ttl))
    return out


def _lease_json(stored: StoredLease, ttl: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"subnet": str(stored.subnet), "ttl": ttl}
    if stored.record is None:
        out["error"] = stored.error
        return out
    rec = stored.record
    out.update(
        node=rec.node,
        node_id=rec.node_id,
        site=rec.site,
        public_ip=str(rec.public_ip),
        private_ips=[str(a) for a in rec.private_ips],
        public_ips=[str(a) for a in rec.public_ips],
        backend=rec.backend_type,
        vtep_mac=str(rec.vtep_mac),
        vni=rec.vni,
        public_key=rec.public_key,
        probe_port=rec.probe_port,
        wireguard_port=rec.wireguard_port,
    )
    return out


@leases.command("list")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
@friendly_errors
def leases_list(ctx: click.Context, output: str) -> None:
    """List every lease."""
    rows = _run(ctx, _leases_with_ttl)
    if output == "json":
        _echo_json([_lease_json(s, t) for s, t in rows])
        return
    table = []
    for stored, ttl in rows:
        rec = stored.record
        ttl_text = "-" if ttl is None else ("expired" if ttl < 0 else f"{ttl}s")
        if rec is None:
            table.append([str(stored.subnet), "(malformed)", "-", "-", "-", ttl_text])
            continue
        addrs = ",".join(str(a) for a in (*rec.public_ips, *rec.private_ips)) or str(rec.public_ip)
        table.append([str(stored.subnet), rec.node, rec.site, addrs, rec.backend_type, ttl_text])
    _table(["SUBNET", "NODE", "SITE", "PUBLIC/UNDERLAY", "BACKEND", "TTL"], table)


def _find(rows: list[tuple[StoredLease, int | None]], which: str) -> tuple[StoredLease, int | None]:
    subnet: IPv4Network | None
    try:
        subnet = parse_subnet_arg(which)
    except LeaseFormatError:
        subnet = None  # not a subnet: a node name
    for stored, ttl in rows:
        if stored.subnet == subnet or (stored.record is not None and stored.record.node == which):
            return stored, ttl
    raise NotFoundError(f"no lease for {which!r}", hint="see 'overlayctl leases list'")


@leases.command("show")
@click.argument("which")
@click.pass_context
@friendly_errors
def leases_show(ctx: click.Context, which: str) -> None:
    """Show one lease, by subnet (10.244.3.0/24) or node name."""
    _echo_json(_lease_json(*_find(_run(ctx, _leases_with_ttl), which)))


@leases.command("reserve")
@click.argument("subnet")
@click.option("--node", required=True, help="Node name the subnet is reserved for.")
@click.pass_context
@friendly_errors
def leases_reserve(ctx: click.Context, subnet: str, node: str) -> None:
    """Reserve SUBNET permanently for a node name."""
    net = parse_subnet_arg(subnet)

    async def go(store: EtcdStore) -> None:
        cfg = await store.get_config()
        if not cfg.is_allocatable(net):
            raise ConfigError(
                f"{net} is not an allocatable subnet of {cfg.network} "
                f"(/{cfg.subnet_len} between {cfg.subnet_min} and {cfg.subnet_max})"
            )
        await store.put_reservation(net, node)

    _run(ctx, go)
    click.echo(f"reserved {net} for {node}")


@leases.command("unreserve")
@click.argument("subnet")
@click.pass_context
@friendly_errors
def leases_unreserve(ctx: click.Context, subnet: str) -> None:
    """Remove a reservation."""
    net = parse_subnet_arg(subnet)
    if not _run(ctx, lambda s: s.delete_reservation(net)):
        raise NotFoundError(f"no reservation for {net}")
    click.echo(f"removed reservation of {net}")


@leases.command("reservations")
@click.pass_context
@friendly_errors
def leases_reservations(ctx: click.Context) -> None:
    """List reservations."""
    found = _run(ctx, lambda s: s.list_reservations())
    _table(["SUBNET", "NODE"], [[str(k), v] for k, v in sorted(found.items())])


@leases.command("revoke")
@click.argument("which")
@click.pass_context
@friendly_errors
def leases_revoke(ctx: click.Context, which: str) -> None:
    """Delete a lease (by subnet or node name); a live daemon will claim a subnet again."""

    async def go(store: EtcdStore) -> IPv4Network:
        stored, _ = _find(await _leases_with_ttl(store), which)
        await store.delete_lease(stored.subnet)
        return stored.subnet

    click.echo(f"revoked {_run(ctx, go)}")


# -- plan ------------------------------------------------------------------------------


@main.command("plan")
@click.option("--node", default=socket.gethostname, help="Plan for this node (default: hostname).")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
@friendly_errors
def plan(ctx: click.Context, node: str, output: str) -> None:
    """The kernel entries NODE's daemon would program (same planners as the daemon)."""

    async def load(
        store: EtcdStore,
    ) -> tuple[NetworkConfig, list[tuple[StoredLease, int | None]], GatewayState]:
        return await store.get_config(), await _leases_with_ttl(store), await store.list_gateways()

    cfg, rows, gateway_state = _run(ctx, load)
    me, _ = _find(rows, node)
    assert me.record is not None
    records = {s.subnet: s.record for s, _ in rows if s.record is not None}
    found = node_plan(
        cfg,
        me.record,
        records,
        gateway_state.claims,
        created={s.subnet: s.create_revision for s, _ in rows},
        unguessable=EtcdStore(ctx.obj).endpoint_addresses(),  # as the daemon: never guessed
    )
    result = found.vxlan
    state = result.state
    if output == "json":
        _echo_json(
            {
                "node": node,
                "subnet": str(me.subnet),
                "routes": [
                    {"dst": str(r.dst), "via": str(r.via), "onlink": True}
                    for r in sorted(state.routes.values())
                ],
                "neighbours": [
                    {"ip": str(n.ip), "mac": str(n.mac)} for n in sorted(state.neighs.values())
                ],
                "fdb": [
                    {"mac": str(f.mac), "dst": str(f.dst)} for f in sorted(state.fdbs.values())
                ],
                "paths": {
                    str(k): {"address": str(p.address), "kind": p.kind, "reason": p.reason}
                    for k, p in sorted(result.paths.items())
                },
                "wireguard": wireguard_json(found.wireguard),
                "skipped": [{"subnet": str(s), "reason": r} for s, r in found.skipped],
            }
        )
        return
    click.echo(f"# plan for {node} ({me.subnet}), backend {cfg.backend.type}: {found.peers} peers")
    for r in sorted(state.routes.values()):
        click.echo(f"route {r.dst} via {r.via} onlink")
    for n in sorted(state.neighs.values()):
        click.echo(f"neigh {n.ip} lladdr {n.mac} permanent")
    for f in sorted(state.fdbs.values()):
        click.echo(f"fdb {f.mac} dst {f.dst} self permanent")
    for line in wireguard_lines(found.wireguard):
        click.echo(line)
    for subnet, reason in found.skipped:
        click.echo(f"# skipped {subnet}: {reason}")


# -- peers (from a running daemon) -------------------------------------------------------


@main.command("peers")
@click.argument("node", required=False)
@click.option(
    "--daemon",
    "daemon_url",
    default="http://127.0.0.1:10256",
    show_default=True,
    envvar="OVERLAYD_DAEMON_URL",
    help="Health port URL of the daemon to ask.",
)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@friendly_errors
def peers(node: str | None, daemon_url: str, output: str) -> None:
    """Each peer's chosen underlay path, RTT, last successful probe and why (from the daemon)."""
    url = daemon_url.rstrip("/") + "/peers"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            found = json.load(resp)["peers"]
    except (OSError, ValueError, KeyError) as exc:
        raise DaemonUnreachableError(
            f"cannot read {url}: {exc}", hint="is overlayd running there? see --daemon"
        ) from None
    if node is not None:
        found = [p for p in found if node in (p["node"], p["subnet"])]
        if not found:
            raise NotFoundError(f"the daemon has no peer {node!r}")
    if output == "json":
        _echo_json(found)
        return
    rows = []
    for p in found:
        rtt = "-" if p["rtt_ms"] is None else f"{p['rtt_ms']:.2f}ms"
        last = "-" if p["last_success"] is None else f"{time.time() - p['last_success']:.1f}s ago"
        path = f"via gateway {p['via']}" if p.get("via") else p["kind"]
        rows.append([p["node"], p["subnet"], p["site"], p["address"], path, rtt, last,
                     p["reason"]])  # fmt: skip
    _table(["NODE", "SUBNET", "SITE", "ADDRESS", "PATH", "RTT", "LAST PROBE", "REASON"], rows)


# -- gateways ------------------------------------------------------------------------------


@main.command("gateways")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
@friendly_errors
def gateways(ctx: click.Context, output: str) -> None:
    """Each site's topology mode, elected gateway, candidates and health reports."""

    async def load(store: EtcdStore) -> tuple[NetworkConfig, Snapshot, GatewayState]:
        return await store.get_config(), await store.list_leases(), await store.list_gateways()

    cfg, snapshot, state = _run(ctx, load)
    records = [s.record for s in snapshot.leases if s.record is not None]
    views = []
    for site in sorted({r.site for r in records} | set(state.claims)):
        claim = state.claims.get(site)
        views.append(
            SiteView(
                site=site,
                mode=cfg.topology.mode_of(site),
                gateway=claim.node if claim else None,
                candidates=tuple(
                    sorted(r.node for r in records if r.site == site and r.gateway_candidate)
                ),
                blamed_by=tuple(sorted(r.reporter for r in state.blame(site, claim.node_id)))
                if claim
                else (),
            )
        )
    if output == "json":
        _echo_json([dataclasses.asdict(v) for v in views])
        return
    rows = []
    for v in views:
        health = "forwarding" if v.gateway else "-"
        if v.blamed_by:
            health = f"blamed by {', '.join(v.blamed_by)}"
        rows.append([v.site, v.mode, v.gateway or "-", ",".join(v.candidates) or "-", health])
    _table(["SITE", "MODE", "GATEWAY", "CANDIDATES", "HEALTH"], rows)


@dataclasses.dataclass(frozen=True)
class SiteView:
    """One site as ``overlayctl gateways`` shows it."""

    site: str
    mode: str
    gateway: str | None
    candidates: tuple[str, ...]
    blamed_by: tuple[str, ...]
