"""``overlayctl leases …``: list, show and revoke subnet leases; reserve subnets for nodes.

Also what other commands need to find a lease: ``leases_with_ttl`` (every lease, sorted,
with its TTL left) and ``find_lease`` (by subnet or node name).
"""

from __future__ import annotations

from ipaddress import IPv4Network
from typing import Any

import click

from overlayd.cli.common import friendly_errors
from overlayd.cli.context import run_with_store
from overlayd.cli.output import ERROR_QUOTE, echo_json, echo_table, output_option
from overlayd.store.admin import reserve
from overlayd.store.api import Store, StoredLease
from overlayd.values.errors import LeaseFormatError, NotFoundError
from overlayd.values.lease import parse_subnet_arg
from overlayd.values.text import quote

LeaseRow = tuple[StoredLease, int | None]  # a lease and its TTL left (None: no etcd lease)


@click.group()
def leases() -> None:
    """Subnet leases and reservations."""


def _subnet_arg(_ctx: click.Context, param: click.Parameter, value: str) -> IPv4Network:
    """A subnet argument (``10.244.3.0/24`` or ``10.244.3.0-24``): a usage error if not."""
    try:
        return parse_subnet_arg(value)
    except LeaseFormatError:
        raise click.BadParameter(f"{value!r} is not a subnet (e.g. 10.244.3.0/24)") from None


async def leases_with_ttl(store: Store) -> list[LeaseRow]:
    """Every lease, sorted by subnet, with the seconds its etcd lease has left."""
    snapshot = await store.list_leases()
    out = []
    for stored in sorted(snapshot.leases, key=lambda s: s.subnet):
        ttl = await store.ttl_left(stored.lease_id) if stored.lease_id else None
        out.append((stored, ttl))
    return out


def find_lease(rows: list[LeaseRow], which: str) -> LeaseRow:
    """The lease of subnet or node name ``which``; ``NotFoundError`` (exit 1) if none."""
    subnet: IPv4Network | None
    try:
        subnet = parse_subnet_arg(which)
    except LeaseFormatError:
        subnet = None  # not a subnet: a node name
    for stored, ttl in rows:
        if stored.subnet == subnet or (stored.record is not None and stored.record.node == which):
            return stored, ttl
    raise NotFoundError(f"no lease for {which!r}", hint="see 'overlayctl leases list'")


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


def _lease_cells(stored: StoredLease, ttl: int | None) -> list[str]:
    """One row of ``leases list``; a malformed record also prints a one-line warning."""
    rec = stored.record
    ttl_text = "-" if ttl is None else ("expired" if ttl < 0 else f"{ttl}s")
    if rec is None:
        why = quote(stored.error, ERROR_QUOTE)
        click.echo(f"warning: lease {stored.subnet} is malformed: {why}", err=True)
        return [str(stored.subnet), "(malformed)", "-", "-", "-", ttl_text]
    addrs = ",".join(str(a) for a in (*rec.public_ips, *rec.private_ips)) or str(rec.public_ip)
    return [str(stored.subnet), rec.node, rec.site, addrs, rec.backend_type, ttl_text]


@leases.command("list")
@output_option
@click.pass_context
@friendly_errors
def leases_list(ctx: click.Context, output: str) -> None:
    """List every lease."""
    rows = run_with_store(ctx, leases_with_ttl)
    if output == "json":
        echo_json([_lease_json(s, t) for s, t in rows])
        return
    table = [_lease_cells(s, t) for s, t in rows]
    echo_table(["SUBNET", "NODE", "SITE", "PUBLIC/UNDERLAY", "BACKEND", "TTL"], table)


@leases.command("show")
@click.argument("which")
@click.pass_context
@friendly_errors
def leases_show(ctx: click.Context, which: str) -> None:
    """Show one lease, by subnet (10.244.3.0/24) or node name."""
    echo_json(_lease_json(*find_lease(run_with_store(ctx, leases_with_ttl), which)))


@leases.command("reserve")
@click.argument("net", metavar="SUBNET", callback=_subnet_arg)
@click.option("--node", required=True, help="Node name the subnet is reserved for.")
@click.pass_context
@friendly_errors
def leases_reserve(ctx: click.Context, net: IPv4Network, node: str) -> None:
    """Reserve SUBNET permanently for a node name."""

    run_with_store(ctx, lambda store: reserve(store, net, node))
    click.echo(f"reserved {net} for {node}")


@leases.command("unreserve")
@click.argument("net", metavar="SUBNET", callback=_subnet_arg)
@click.pass_context
@friendly_errors
def leases_unreserve(ctx: click.Context, net: IPv4Network) -> None:
    """Remove a reservation."""
    if not run_with_store(ctx, lambda s: s.delete_reservation(net)):
        raise NotFoundError(f"no reservation for {net}")
    click.echo(f"removed reservation of {net}")


@leases.command("reservations")
@output_option
@click.pass_context
@friendly_errors
def leases_reservations(ctx: click.Context, output: str) -> None:
    """List reservations."""
    found = run_with_store(ctx, lambda s: s.list_reservations())
    if output == "json":
        echo_json([{"subnet": str(k), "node": v} for k, v in sorted(found.items())])
        return
    echo_table(["SUBNET", "NODE"], [[str(k), v] for k, v in sorted(found.items())])


@leases.command("revoke")
@click.argument("which")
@click.pass_context
@friendly_errors
def leases_revoke(ctx: click.Context, which: str) -> None:
    """Delete a lease (by subnet or node name); a live daemon will claim a subnet again."""

    async def go(store: Store) -> IPv4Network:
        stored, _ = find_lease(await leases_with_ttl(store), which)
        await store.delete_lease(stored.subnet)
        return stored.subnet

    click.echo(f"revoked {run_with_store(ctx, go)}")
