"""The management writes ``overlayctl`` and the web console share: write the network
config, reserve a subnet, set a site's topology mode. Each validates before it writes, with
the same rules and messages wherever it is called from.
"""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Network
from typing import Protocol

from overlayd.store.api import ConfigStore, ReservationStore
from overlayd.values.config import TOPOLOGY_MODES, NetworkConfig, TopologyConfig, parse_config
from overlayd.values.errors import ConfigError, ConfigMissingError
from overlayd.values.text import quote


class AdminStore(ConfigStore, ReservationStore, Protocol):
    """What the management writes need: the config and the reservations."""


async def write_config(store: ConfigStore, cfg: NetworkConfig, force: bool) -> None:
    """Write ``cfg``; ``ConfigError`` if a config exists already and not ``force``."""
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


def check_reservation(cfg: NetworkConfig, net: IPv4Network, node: str) -> None:
    """``ConfigError`` unless ``net`` is one of ``cfg``'s subnets and ``node`` a name."""
    if not node.strip():
        raise ConfigError("a reservation needs a node name")
    if not cfg.is_allocatable(net):
        raise ConfigError(
            f"{net} is not an allocatable subnet of {cfg.network} "
            f"(/{cfg.subnet_len} between {cfg.subnet_min} and {cfg.subnet_max})"
        )


async def reserve(store: AdminStore, net: IPv4Network, node: str) -> None:
    """Reserve ``net`` for ``node``, once ``check_reservation`` passes on the stored config."""
    check_reservation(await store.get_config(), net, node)
    await store.put_reservation(net, node)


def with_site_mode(cfg: NetworkConfig, site: str, mode: str) -> NetworkConfig:
    """``cfg`` with ``site`` in topology ``mode``, validated as a whole (gateway mode needs
    the vxlan+wireguard backend); ``ConfigError`` if it is not valid."""
    if not site.strip():
        raise ConfigError("a site mode needs a site name")
    if mode not in TOPOLOGY_MODES:
        raise ConfigError(f"mode must be one of {', '.join(TOPOLOGY_MODES)}, got {quote(mode)}")
    sites = dict(cfg.topology.sites)
    sites[site] = mode
    topology = TopologyConfig(cfg.topology.mode, tuple(sorted(sites.items())))
    return parse_config(dataclasses.replace(cfg, topology=topology).to_json())


async def set_site_mode(store: ConfigStore, site: str, mode: str) -> NetworkConfig:
    """Write the stored config with ``site`` in ``mode``; the config written."""
    cfg = with_site_mode(await store.get_config(), site, mode)
    await store.put_config(cfg)
    return cfg
