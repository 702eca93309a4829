"""``overlayctl console``: the web console (overlayd/console, docs/console.md) over the
store of the etcd flags, until Ctrl-C."""

from __future__ import annotations

import secrets
from pathlib import Path

import click

from overlayd.cli.common import friendly_errors
from overlayd.cli.context import CtlContext, run_with_store
from overlayd.console.security import (
    Access,
    Listen,
    allowed_hosts,
    listen_rule,
    parse_listen,
    read_token,
)


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

    clock = ctx.find_object(CtlContext)
    assert clock is not None
    run_with_store(ctx, lambda store: serve(store, access, where, ready, clock.clock))
