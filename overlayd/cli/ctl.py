"""``overlayctl``: inspect and manage the network config, leases and plans in etcd."""

from __future__ import annotations

import dataclasses
import json
import socket
import urllib.request
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, TypeVar

import click

from overlayd.agent.rotation import request_rotation
from overlayd.cli.common import FriendlyGroup, etcd_options, etcd_settings, friendly_errors
from overlayd.cli.context import CtlContext, run_with_store
from overlayd.cli.planview import plan_json, plan_lines
from overlayd.planning.cleartext import FIX as PLAIN_VXLAN_FIX
from overlayd.planning.node import plan_node
from overlayd.store.api import Snapshot, Store, StoredLease
from overlayd.values.config import (
    VXLAN,
    VXLAN_WIREGUARD,
    NetworkConfig,
    parse_backend,
    parse_config,
)
from overlayd.values.errors import (
    ConfigError,
    ConfigMissingError,
    DaemonUnreachableError,
    LeaseFormatError,
    NotFoundError,
)
from overlayd.values.gateway_state import GatewayState
from overlayd.values.lease import parse_subnet_arg
from overlayd.values.text import quote

T = TypeVar("T")
ERROR_QUOTE = 160  # characters of a decoding error (it quotes values from the store) shown


def _run(ctx: click.Context, fn: Callable[[Store], Awaitable[T]]) -> T:
    return run_with_store(ctx, fn)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _subnet_arg(_ctx: click.Context, param: click.Parameter, value: str) -> IPv4Network:
    """A subnet argument (``10.244.3.0/24`` or ``10.244.3.0-24``): a usage error if not."""
    try:
        return parse_subnet_arg(value)
    except LeaseFormatError:
        raise click.BadParameter(f"{value!r} is not a subnet (e.g. 10.244.3.0/24)") from None


output_option = click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True
)


@click.group(cls=FriendlyGroup)
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
    """Inspect and manage an overlayd network.

    Exit codes: 0 ok, 1 runtime error (e.g. etcd unreachable), 2 usage or configuration
    error, 70 internal error (rerun with --debug for the traceback).
    """
    base = ctx.obj if isinstance(ctx.obj, CtlContext) else CtlContext()  # tests pass one in
    settings = etcd_settings(etcd_endpoints, etcd_prefix, etcd_cafile, etcd_certfile, etcd_keyfile)
    ctx.obj = dataclasses.replace(base, settings=settings)


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

    async def go(store: Store) -> None:
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


async def _leases_with_ttl(store: Store) -> list[tuple[StoredLease, int | None]]:
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
@output_option
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
            why = quote(stored.error, ERROR_QUOTE)
            click.echo(f"warning: lease {stored.subnet} is malformed: {why}", err=True)
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
@click.argument("net", metavar="SUBNET", callback=_subnet_arg)
@click.option("--node", required=True, help="Node name the subnet is reserved for.")
@click.pass_context
@friendly_errors
def leases_reserve(ctx: click.Context, net: IPv4Network, node: str) -> None:
    """Reserve SUBNET permanently for a node name."""

    async def go(store: Store) -> None:
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
@click.argument("net", metavar="SUBNET", callback=_subnet_arg)
@click.pass_context
@friendly_errors
def leases_unreserve(ctx: click.Context, net: IPv4Network) -> None:
    """Remove a reservation."""
    if not _run(ctx, lambda s: s.delete_reservation(net)):
        raise NotFoundError(f"no reservation for {net}")
    click.echo(f"removed reservation of {net}")


@leases.command("reservations")
@output_option
@click.pass_context
@friendly_errors
def leases_reservations(ctx: click.Context, output: str) -> None:
    """List reservations."""
    found = _run(ctx, lambda s: s.list_reservations())
    if output == "json":
        _echo_json([{"subnet": str(k), "node": v} for k, v in sorted(found.items())])
        return
    _table(["SUBNET", "NODE"], [[str(k), v] for k, v in sorted(found.items())])


@leases.command("revoke")
@click.argument("which")
@click.pass_context
@friendly_errors
def leases_revoke(ctx: click.Context, which: str) -> None:
    """Delete a lease (by subnet or node name); a live daemon will claim a subnet again."""

    async def go(store: Store) -> IPv4Network:
        stored, _ = _find(await _leases_with_ttl(store), which)
        await store.delete_lease(stored.subnet)
        return stored.subnet

    click.echo(f"revoked {_run(ctx, go)}")


# -- plan ------------------------------------------------------------------------------


# -- node ------------------------------------------------------------------------------


@main.group()
def node() -> None:
    """Requests to one node's daemon, through etcd (works from any host)."""


@node.command("rotate-key")
@click.argument("name")
@click.option("--wait/--no-wait", default=True, help="Wait until the node published its new key.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True)
@click.pass_context
@friendly_errors
def node_rotate_key(ctx: click.Context, name: str, wait: bool, timeout: float) -> None:
    """Make node NAME replace its X25519 key (WireGuard and probes); its peers follow.

    Exit code 1 for an unknown node (nothing is requested) or when the node has not
    rotated within --timeout (the request stays and is served when its daemon runs).
    """
    by = socket.gethostname()
    done = _run(ctx, lambda s: request_rotation(s, name, by=by, wait=timeout if wait else None))
    if done.new is None:
        click.echo(f"node {name}: key rotation requested (public key now {done.old})")
    else:
        click.echo(f"node {name}: new public key {done.new} (was {done.old})")


@main.command("plan")
@click.option("--node", default=socket.gethostname, help="Plan for this node (default: hostname).")
@output_option
@click.pass_context
@friendly_errors
def plan(ctx: click.Context, node: str, output: str) -> None:
    """The kernel entries NODE's daemon would program (same planners as the daemon)."""

    async def load(
        store: Store,
    ) -> tuple[
        NetworkConfig, list[tuple[StoredLease, int | None]], GatewayState, frozenset[IPv4Address]
    ]:
        cfg, rows = await store.get_config(), await _leases_with_ttl(store)
        return cfg, rows, await store.list_gateways(), store.endpoint_addresses()

    cfg, rows, gateway_state, unguessable = _run(ctx, load)
    me, _ = _find(rows, node)
    if me.record is None:
        raise LeaseFormatError(
            f"the lease of {node} ({me.subnet}) is malformed: {quote(me.error, ERROR_QUOTE)}",
            hint=f"revoke it ('overlayctl leases revoke {me.subnet}'); its daemon claims again",
        )
    records = {s.subnet: s.record for s, _ in rows if s.record is not None}
    found = plan_node(
        cfg,
        me.record,
        records,
        claims=gateway_state.claims,
        created={s.subnet: s.create_revision for s, _ in rows},
        unguessable=unguessable,  # as the daemon: the etcd endpoints are never guessed paths
    )
    if output == "json":
        _echo_json(plan_json(node, me.subnet, found))
        return
    for line in plan_lines(node, me.subnet, cfg.backend.type, found):
        click.echo(line)


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
@output_option
@click.pass_context
@friendly_errors
def peers(ctx: click.Context, node: str | None, daemon_url: str, output: str) -> None:
    """Each peer's chosen underlay path, RTT, last successful probe and why (from the daemon)."""
    url = daemon_url.rstrip("/") + "/peers"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            found = json.load(resp)["peers"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DaemonUnreachableError(
            f"cannot read {url}: {exc}", hint="is overlayd running there? see --daemon"
        ) from None
    if not isinstance(found, list) or not all(isinstance(p, dict) for p in found):
        raise DaemonUnreachableError(f"{url} did not send a list of peers: {quote(found)}")
    if node is not None:
        found = [p for p in found if node in (p.get("node"), p.get("subnet"))]
        if not found:
            raise NotFoundError(f"the daemon has no peer {node!r}")
    if output == "json":
        _echo_json(found)
        return
    env = ctx.find_object(CtlContext)
    assert env is not None
    rows = [_peer_row(p, env.clock()) for p in found]
    _table(["NODE", "SUBNET", "SITE", "ADDRESS", "PATH", "RTT", "LAST PROBE", "REASON"], rows)


def _peer_row(p: dict[str, Any], now: float) -> list[str]:
    """One /peers entry as table cells; a field missing or of the wrong type shows as ``-``
    (a daemon of another version must not make the table fail)."""

    def text(key: str) -> str:
        value = p.get(key)
        return "-" if value is None or isinstance(value, (dict, list)) else str(value)[:64]

    def number(key: str) -> float | None:
        value = p.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value)

    rtt, last = number("rtt_ms"), number("last_success")
    path = f"via gateway {text('via')}" if p.get("via") else text("kind")
    return [
        text("node"), text("subnet"), text("site"), text("address"), path,
        "-" if rtt is None else f"{rtt:.2f}ms",
        "-" if last is None else f"{now - last:.1f}s ago",
        text("reason"),
    ]  # fmt: skip


# -- gateways ------------------------------------------------------------------------------


@main.command("gateways")
@output_option
@click.pass_context
@friendly_errors
def gateways(ctx: click.Context, output: str) -> None:
    """Each site's topology mode, elected gateway, candidates and health reports."""

    async def load(store: Store) -> tuple[NetworkConfig, Snapshot, GatewayState]:
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
