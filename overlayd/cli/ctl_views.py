"""``overlayctl plan``, ``peers`` and ``gateways``: read-only views of what a node does.

``plan`` runs the daemon's own planner (``plan_node``) on what etcd holds and prints it
with ``planview``; ``peers`` asks a running daemon's health port (``/peers``), not etcd;
``gateways`` shows each site's election state from etcd.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import urllib.parse
import urllib.request
from ipaddress import IPv4Address
from typing import Any

import click

from overlayd.cli.common import friendly_errors
from overlayd.cli.context import CtlContext, run_with_store
from overlayd.cli.ctl_leases import LeaseRow, find_lease, leases_with_ttl
from overlayd.cli.output import ERROR_QUOTE, echo_json, echo_table, output_option
from overlayd.cli.planview import plan_json, plan_lines
from overlayd.planning.node import plan_node
from overlayd.store.api import Snapshot, Store
from overlayd.values.config import NetworkConfig
from overlayd.values.errors import DaemonUnreachableError, LeaseFormatError, NotFoundError
from overlayd.values.gateway_state import GatewayState
from overlayd.values.text import quote

# -- plan ------------------------------------------------------------------------------

PlanInputs = tuple[NetworkConfig, list[LeaseRow], GatewayState, frozenset[IPv4Address]]


async def _plan_inputs(store: Store) -> PlanInputs:
    cfg, rows = await store.get_config(), await leases_with_ttl(store)
    return cfg, rows, await store.list_gateways(), store.endpoint_addresses()


@click.command("plan")
@click.option("--node", default=socket.gethostname, help="Plan for this node (default: hostname).")
@output_option
@click.pass_context
@friendly_errors
def plan(ctx: click.Context, node: str, output: str) -> None:
    """The kernel entries NODE's daemon would program (same planners as the daemon)."""
    cfg, rows, gateway_state, unguessable = run_with_store(ctx, _plan_inputs)
    me, _ = find_lease(rows, node)
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
        echo_json(plan_json(node, me.subnet, found))
        return
    for line in plan_lines(node, me.subnet, cfg.backend.type, found):
        click.echo(line)


# -- peers (from a running daemon) -------------------------------------------------------


def _daemon_json(url: str) -> Any:
    """The JSON document the daemon's health port serves at ``url``; ``OSError`` or
    ``ValueError`` when it cannot be fetched or parsed."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


def _daemon_peers(url: str) -> list[dict[str, Any]]:
    """The ``peers`` list of the daemon's ``/peers`` at ``url``, checked to be a list of
    objects; ``DaemonUnreachableError`` (exit 1) otherwise."""
    try:
        found = _daemon_json(url)["peers"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DaemonUnreachableError(
            f"cannot read {url}: {exc}", hint="is overlayd running there? see --daemon"
        ) from None
    if not isinstance(found, list) or not all(isinstance(p, dict) for p in found):
        raise DaemonUnreachableError(f"{url} did not send a list of peers: {quote(found)}")
    return found


def _daemon_url(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """``--daemon``: an ``http(s)://host[:port]`` URL, or a usage error before anything is
    fetched (urllib would also follow ``ftp://`` or read a ``file://``)."""
    try:
        parts = urllib.parse.urlsplit(value)
        good = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port out of range or not a number, an unclosed "[" …
        good = False
    if not good:
        raise click.BadParameter(f"{value!r} is not a daemon URL (e.g. http://127.0.0.1:10256)")
    return value


@click.command("peers")
@click.argument("node", required=False)
@click.option(
    "--daemon",
    "daemon_url",
    default="http://127.0.0.1:10256",
    show_default=True,
    envvar="OVERLAYD_DAEMON_URL",
    callback=_daemon_url,
    help="Health port URL of the daemon to ask.",
)
@output_option
@click.pass_context
@friendly_errors
def peers(ctx: click.Context, node: str | None, daemon_url: str, output: str) -> None:
    """Each peer's chosen underlay path, RTT, last successful probe and why (from the daemon)."""
    found = _daemon_peers(daemon_url.rstrip("/") + "/peers")
    if node is not None:
        found = [p for p in found if node in (p.get("node"), p.get("subnet"))]
        if not found:
            raise NotFoundError(f"the daemon has no peer {node!r}")
    if output == "json":
        echo_json(found)
        return
    env = ctx.find_object(CtlContext)
    assert env is not None
    rows = [_peer_row(p, env.clock()) for p in found]
    echo_table(["NODE", "SUBNET", "SITE", "ADDRESS", "PATH", "RTT", "LAST PROBE", "REASON"], rows)
    if node is None and (line := _discovery_line(daemon_url.rstrip("/") + "/status")):
        click.echo(line)


def _discovery_line(url: str) -> str | None:
    """What the daemon learned of its own public address (its ``/status``), as one line;
    None when it was given ``--public-ip`` or cannot tell (an older daemon)."""
    try:
        status = _daemon_json(url)
        discovery, public = status.get("discovery"), status.get("public_ips")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(discovery, str) or not isinstance(public, list):
        return None
    published = ", ".join(str(a)[:64] for a in public[:16]) or "none confirmed"
    return f"this node's public address: {published} ({discovery[:400]})"


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
    if p.get("relay"):
        path = f"via relay {text('relay')}"
    return [
        text("node"), text("subnet"), text("site"), text("address"), path,
        "-" if rtt is None else f"{rtt:.2f}ms",
        "-" if last is None else f"{now - last:.1f}s ago",
        text("reason"),
    ]  # fmt: skip


# -- gateways ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SiteView:
    """One site as ``overlayctl gateways`` shows it."""

    site: str
    mode: str
    gateway: str | None
    candidates: tuple[str, ...]
    blamed_by: tuple[str, ...]


def _site_views(cfg: NetworkConfig, snapshot: Snapshot, state: GatewayState) -> list[SiteView]:
    """Every site with a lease or a gateway claim, sorted by name; malformed leases skipped."""
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
    return views


async def _gateway_inputs(store: Store) -> tuple[NetworkConfig, Snapshot, GatewayState]:
    return await store.get_config(), await store.list_leases(), await store.list_gateways()


@click.command("gateways")
@output_option
@click.pass_context
@friendly_errors
def gateways(ctx: click.Context, output: str) -> None:
    """Each site's topology mode, elected gateway, candidates and health reports."""
    views = _site_views(*run_with_store(ctx, _gateway_inputs))
    if output == "json":
        echo_json([dataclasses.asdict(v) for v in views])
        return
    rows = []
    for v in views:
        health = "forwarding" if v.gateway else "-"
        if v.blamed_by:
            health = f"blamed by {', '.join(v.blamed_by)}"
        rows.append([v.site, v.mode, v.gateway or "-", ",".join(v.candidates) or "-", health])
    echo_table(["SITE", "MODE", "GATEWAY", "CANDIDATES", "HEALTH"], rows)
