"""``overlayctl names``: every DNS name of the network, and what one name resolves to.

Built from etcd with the daemon's own planner (``planning/names.py`` ``build_zone``), so
what it prints is what every daemon's responder answers (docs/dns.md). A name claimed by
several nodes prints one ``warning: …`` line on stderr saying who serves it.
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Address
from pathlib import Path

import click

from overlayd.cli.common import friendly_errors
from overlayd.cli.context import run_with_store
from overlayd.cli.output import echo_json, echo_table, output_option
from overlayd.disk.hosts_file import remove_hosts_block
from overlayd.planning.names import Answer, RType, Zone, resolve, reverse_name
from overlayd.planning.zone_builder import build_zone
from overlayd.store.api import Store
from overlayd.values.errors import ConfigError, NotFoundError
from overlayd.values.names import DEFAULT_ZONE, parse_zone
from overlayd.values.text import quote


async def _zone(store: Store) -> Zone:
    cfg, snapshot, table = (
        await store.get_config(),
        await store.list_leases(),
        await store.list_names(),
    )
    records = {s.subnet: s.record for s in snapshot.leases if s.record is not None}
    created = {s.subnet: s.create_revision for s in snapshot.leases}
    host = socket.gethostname().split(".", 1)[0] or "overlayctl"
    return build_zone(cfg.dns_zone, cfg.network, host, records, created, table.names)


def _warn_conflicts(zone: Zone) -> None:
    for conflict in zone.conflicts:
        losers = ", ".join(quote(n) for n in conflict.losers)
        click.echo(
            f"warning: {conflict.name} is claimed by {quote(conflict.winner)} and {losers}: "
            f"served by {quote(conflict.winner)}",
            err=True,
        )


@click.group("names", invoke_without_command=True)
@output_option
@click.pass_context
@friendly_errors
def names(ctx: click.Context, output: str) -> None:
    """Every DNS name of the network and its address (as every daemon answers them)."""
    if ctx.invoked_subcommand is not None:
        return
    zone = run_with_store(ctx, _zone)
    _warn_conflicts(zone)
    if output == "json":
        echo_json(
            [
                {"name": e.name, "address": str(e.address), "kind": e.kind.name.lower(),
                 "node": e.node}
                for e in zone.entries
            ]
        )  # fmt: skip
        return
    rows = [[e.name, str(e.address), e.kind.name.lower(), e.node] for e in zone.entries]
    echo_table(["NAME", "ADDRESS", "KIND", "NODE"], rows)


def _question(name: str, zone: Zone) -> tuple[str, RType]:
    """An address asks for its PTR; a relative name is taken in the zone."""
    try:
        address = IPv4Address(name)
    except ValueError:
        fqdn = name.rstrip(".").lower()
        in_zone = fqdn == zone.origin or fqdn.endswith("." + zone.origin)
        return (fqdn if in_zone or name.endswith(".") else f"{fqdn}.{zone.origin}"), RType.A
    return reverse_name(address), RType.PTR


@names.command("cleanup")
@click.option(
    "--hosts-file",
    type=click.Path(path_type=Path),
    default=Path("/etc/hosts"),
    help="The hosts file a daemon kept the names in (overlayd --hosts-file).",
)
@click.option("--zone", default=DEFAULT_ZONE, help="The zone whose block to remove.")
@friendly_errors
def names_cleanup(hosts_file: Path, zone: str) -> None:
    """Remove overlayd's block of names from a hosts file (nothing else is touched)."""
    origin = parse_zone(zone, "--zone")
    try:
        removed = remove_hosts_block(hosts_file, origin)
    except OSError as exc:
        raise ConfigError(f"cannot rewrite {hosts_file}: {exc.strerror or exc}") from None
    click.echo(f"{'removed' if removed else 'no'} block of {origin} in {hosts_file}")


@names.command("resolve")
@click.argument("name")
@click.pass_context
@friendly_errors
def names_resolve(ctx: click.Context, name: str) -> None:
    """Print what NAME (relative to the zone, or an address for its PTR) resolves to."""
    zone = run_with_store(ctx, _zone)
    qname, rtype = _question(name, zone)
    answer: Answer = resolve(zone, qname, rtype)
    if not answer.answer:
        raise NotFoundError(
            f"{qname}: {answer.rcode.value}",
            hint="see 'overlayctl names' for every name",
        )
    for record in answer.answer:
        click.echo(record.data.rstrip("."))
