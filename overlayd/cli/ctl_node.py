"""``overlayctl node …``: requests to one node's daemon, written to etcd for it to serve.

The request protocol itself (control key, acknowledgement) is ``overlayd.agent.rotation``'s.
"""

from __future__ import annotations

import socket

import click

from overlayd.agent.rotation import request_rotation
from overlayd.cli.common import friendly_errors
from overlayd.cli.context import run_with_store


@click.group()
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
    done = run_with_store(
        ctx, lambda s: request_rotation(s, name, by=by, wait=timeout if wait else None)
    )
    if done.new is None:
        click.echo(f"node {name}: key rotation requested (public key now {done.old})")
    else:
        click.echo(f"node {name}: new public key {done.new} (was {done.old})")
