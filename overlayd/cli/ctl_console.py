"""``overlayctl console``: the web console (overlayd/console, docs/console.md) over the
store of the etcd flags, until Ctrl-C."""

from __future__ import annotations

import secrets
from pathlib import Path

import click

from overlayd.cli.common import friendly_errors
from overlayd.cli.context import CtlContext, run_with_store
from overlayd.cli.ctl_status import render_svg
from overlayd.cli.graphview import graph_dot
from overlayd.console.security import (
    Access,
    Listen,
    allowed_hosts,
    listen_rule,
    parse_listen,
    read_token,
)
from overlayd.planning.observed import ObservedNetwork


@click.command("console")
@click.option(
    "--listen",
    default="127.0.0.1:8080",
    show_default=True,
    help="ADDRESS:PORT to serve on; anything but loopback needs --token-file.",
)
@click.option(
    "--token-file",
    type=click.Path(path_type=Path),
    help="File holding the secret token every request must carry (header or login form).",
)
@click.pass_context
@friendly_errors
def console(ctx: click.Context, listen: str, token_file: Path | None) -> None:
    """Serve the web console: the network, its nodes and sites, and its management."""
    where = parse_listen(listen)
    token = read_token(token_file) if token_file is not None else None
    listen_rule(where, token)
    access = Access(secrets.token_urlsafe(32), token, allowed_hosts(where))

    def ready(bound: Listen) -> None:
        click.echo(f"console serving {bound.url}" + ("" if token is None else " (token needed)"))

    # aiohttp and jinja2 cost a third of a second to import: only this command pays it
    from overlayd.console.server import serve

    env = ctx.find_object(CtlContext)
    assert env is not None

    def draw(net: ObservedNetwork) -> str:  # overlayctl graph -o svg's picture
        return render_svg(graph_dot(net))

    run_with_store(ctx, lambda store: serve(store, access, where, ready, env.clock, draw))
