"""``overlayctl network init|show``: write and read the network config in the store.

The flags of ``init`` become a flannel-format config validated by ``values.network_init``
(the console's form uses the same) before ``store.admin`` writes it.
"""

from __future__ import annotations

import click

from overlayd.cli.common import friendly_errors
from overlayd.cli.context import run_with_store
from overlayd.planning.cleartext import FIX as PLAIN_VXLAN_FIX
from overlayd.store.admin import write_config
from overlayd.values.config import VXLAN, VXLAN_WIREGUARD, parse_config
from overlayd.values.network_init import InitRequest, init_config


@click.group()
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
@click.option(
    "--dns-zone",
    default=None,
    help="The DNS zone every daemon answers for (default overlay.internal; docs/dns.md).",
)
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
    dns_zone: str | None,
    force: bool,
) -> None:
    """Write the network config (validated first)."""
    cfg = init_config(
        InitRequest(
            net, backend, subnet_len, subnet_min, subnet_max, vni, port, mtu, listen_port,
            keepalive, topology, site_mode, dns_zone,
        )
    )  # fmt: skip
    run_with_store(ctx, lambda store: write_config(store, cfg, force))
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
    text = run_with_store(ctx, lambda s: s.get_config_text())
    click.echo(parse_config(text).to_json(redact=True))
