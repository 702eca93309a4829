"""``overlayctl status`` and ``overlayctl graph``: the observed network, from the reports
every daemon publishes under ``status/`` (docs/etcd-schema.md, "Status reports").

Both read the leases, the reports and the gateway claims once and fold them with
``planning.observed.observe_network``; ``status`` prints tables (or JSON), ``graph``
the DOT text of ``graphview`` or, with ``-o svg``, that text rendered by Graphviz's
``dot`` (Debian package ``graphviz``).
"""

from __future__ import annotations

import shutil
import subprocess
from ipaddress import IPv4Network
from typing import Any

import click

from overlayd.cli.common import friendly_errors
from overlayd.cli.context import CtlContext, run_with_store
from overlayd.cli.graphview import NODES, SITES, graph_dot
from overlayd.cli.output import echo_json, echo_table, output_option
from overlayd.planning.observed import (
    MISSING,
    OK,
    STALE,
    UNLEASED,
    ObservedNetwork,
    observe_network,
)
from overlayd.store.api import Store
from overlayd.values.errors import ToolError
from overlayd.values.report import NodeReport

DOT_TIMEOUT = 120.0  # seconds: a large graph takes dot long, but not forever
AUTO = "auto"
AUTO_NODES = 50
"""The largest network ``graph`` draws node by node unless told (dot took ~4 s for 50
nodes in 20 sites and ~40 s for 100: scripts/bench_report.py's network, under load)."""
ERRORS_SHOWN = 5  # malformed reports named in the status output


async def _observe(store: Store, now: float) -> ObservedNetwork:
    cfg = await store.get_config()
    snapshot, table = await store.list_leases(), await store.list_status_reports()
    claims = (await store.list_gateways()).claims
    return observe_network(
        [s.record for s in snapshot.leases if s.record is not None],
        table.reports,
        {site: claim.node for site, claim in claims.items()},
        cfg.topology.mode_of,
        now,
        malformed=table.errors,
    )


def _network(ctx: click.Context) -> ObservedNetwork:
    env = ctx.find_object(CtlContext)
    assert env is not None
    now = env.clock()
    return run_with_store(ctx, lambda store: _observe(store, now))


# -- status --------------------------------------------------------------------------


@click.command("status")
@output_option
@click.pass_context
@friendly_errors
def status(ctx: click.Context, output: str) -> None:
    """The network at a glance: nodes, sites, gateways, unreachable pairs, stale reports."""
    env = ctx.find_object(CtlContext)
    assert env is not None
    net = _network(ctx)
    if output == "json":
        echo_json(status_json(net))
        return
    now = env.clock()
    echo_table(
        ["NODE", "SITE", "SUBNET", "ROLE", "PEERS", "PATHS", "UNREACHABLE", "REPORT"],
        [_node_row(n.node, n.site, n.subnet, n.report, n.health, now) for n in net.nodes],
    )
    click.echo()
    echo_table(
        ["SITE", "MODE", "GATEWAY", "NODES"],
        [[s.site, s.mode, s.gateway or "-", str(len(s.nodes))] for s in net.sites],
    )
    click.echo()
    echo_table(["FROM", "UNREACHABLE PEER"], [[p.reporter, p.peer] for p in net.unreachable])
    if net.more:
        click.echo(f"(and {net.more} more unreachable pairs the reports count but do not name)")
    click.echo()
    click.echo(_summary(net))
    for key, why in net.malformed[:ERRORS_SHOWN]:
        click.echo(f"malformed report status/{key[:64]}: {why[:200]}")


def _node_row(
    node: str,
    site: str,
    subnet: IPv4Network | None,
    report: NodeReport | None,
    health: str,
    now: float,
) -> list[str]:
    """One node's cells; a node without a report shows ``-`` but for its lease."""
    subnet_text = "-" if subnet is None else str(subnet)
    if report is None:
        return [node, site or "-", subnet_text, "-", "-", "-", "-", health]
    paths = ", ".join(f"{k} {n}" for k, n in report.paths) or "-"
    unreachable = str(report.unreachable_total)
    if report.unreachable:
        shown = report.unreachable[:3]
        more = ",…" if report.unreachable_total > len(shown) else ""
        unreachable += f" ({','.join(shown)}{more})"
    age = f"{max(0.0, now - report.written_at):.0f}s ago"
    written = age if health == OK else f"{health} ({age})"
    return [node, site, subnet_text, report.role, str(report.peers), paths, unreachable, written]


def _summary(net: ObservedNetwork) -> str:
    gateways = sum(1 for s in net.sites if s.gateway)
    pairs = len(net.unreachable) + net.more
    return (
        f"{len(net.nodes)} nodes in {len(net.sites)} sites, {gateways} gateways; "
        f"{pairs} unreachable pairs; reports: {net.count(OK)} ok, {net.count(STALE)} "
        f"stale, {net.count(MISSING)} missing, {net.count(UNLEASED)} without a lease"
        + (f"; {len(net.malformed)} malformed" if net.malformed else "")
    )


def status_json(net: ObservedNetwork) -> dict[str, Any]:
    """``overlayctl status -o json``: every list sorted."""
    return {
        "nodes": [
            {
                "node": n.node,
                "site": n.site,
                "subnet": None if n.subnet is None else str(n.subnet),
                "gateway": n.gateway,
                "health": n.health,
                "report": None if n.report is None else _report_json(n.report),
            }
            for n in net.nodes
        ],
        "sites": [
            {"site": s.site, "mode": s.mode, "gateway": s.gateway, "nodes": list(s.nodes)}
            for s in net.sites
        ],
        "unreachable": [{"from": p.reporter, "to": p.peer} for p in net.unreachable],
        "unreachable_unnamed": net.more,
        "malformed": [{"key": k, "error": e} for k, e in net.malformed],
    }


def _report_json(r: NodeReport) -> dict[str, Any]:
    return {
        "role": r.role,
        "versions": dict(r.versions),
        "last_reconcile": r.last_reconcile,
        "paths": dict(r.paths),
        "site_rtts_ms": dict(r.site_rtts),
        "site_paths": {site: dict(kinds) for site, kinds in r.site_paths},
        "unreachable": list(r.unreachable),
        "unreachable_total": r.unreachable_total,
        "written_at": r.written_at,
    }


# -- graph ---------------------------------------------------------------------------


@click.command("graph")
@click.option(
    "-o",
    "--output",
    type=click.Choice(["dot", "svg"]),
    default="dot",
    show_default=True,
    help="DOT text, or SVG rendered by Graphviz's dot.",
)
@click.option(
    "--level",
    type=click.Choice([AUTO, NODES, SITES]),
    default=AUTO,
    show_default=True,
    help=f"Draw every node, or one box per site (auto: nodes up to {AUTO_NODES} nodes).",
)
@click.pass_context
@friendly_errors
def graph(ctx: click.Context, output: str, level: str) -> None:
    """The observed topology: sites as clusters, gateways marked, edges coloured by path
    kind, broken paths red."""
    net = _network(ctx)
    if level == AUTO:
        level = NODES if len(net.nodes) <= AUTO_NODES else SITES
    text = graph_dot(net, level)
    click.echo(render_svg(text) if output == "svg" else text, nl=False)


def render_svg(dot_text: str) -> str:
    """``dot_text`` rendered as SVG by Graphviz's ``dot``; ``ToolError`` when it is not
    installed or fails."""
    dot = shutil.which("dot")
    if dot is None:
        raise ToolError(
            "Graphviz's dot is not installed: cannot render SVG",
            hint="install it ('apt-get install graphviz'), or print the DOT text with -o dot",
        )
    try:
        done = subprocess.run(
            [dot, "-Tsvg"], input=dot_text, capture_output=True, text=True,
            timeout=DOT_TIMEOUT, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolError(f"dot did not render the graph: {exc}") from None
    if done.returncode != 0:
        raise ToolError(f"dot failed (exit {done.returncode}): {done.stderr.strip()[:300]}")
    return done.stdout
