"""``overlayctl``'s root command: the etcd flags, ``--debug`` and the command groups.

Each group lives in its own module: ``ctl_network`` (the network config), ``ctl_leases``
(leases and reservations), ``ctl_node`` (requests to a node's daemon) and ``ctl_views``
(``plan``, ``peers``, ``gateways``), ``ctl_names`` (DNS names), ``ctl_status``
(``status``, ``graph``: the observed network), ``ctl_console`` (the web console). Errors
and exit codes are ``common``'s.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from overlayd.cli.common import FriendlyGroup, etcd_options, etcd_settings
from overlayd.cli.context import CtlContext
from overlayd.cli.ctl_console import console
from overlayd.cli.ctl_leases import leases
from overlayd.cli.ctl_names import names
from overlayd.cli.ctl_network import network
from overlayd.cli.ctl_node import node
from overlayd.cli.ctl_status import graph, status
from overlayd.cli.ctl_views import gateways, peers, plan


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


main.add_command(network)
main.add_command(leases)
main.add_command(node)
main.add_command(plan)
main.add_command(peers)
main.add_command(gateways)
main.add_command(names)
main.add_command(status)
main.add_command(graph)
main.add_command(console)
