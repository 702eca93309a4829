"""What ``overlayctl network init`` and the console's "create the network" form ask for,
and the validated config it becomes (pure): one rule for both."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from overlayd.values.config import VXLAN_WIREGUARD, NetworkConfig, parse_backend, parse_config


@dataclass(frozen=True)
class InitRequest:
    """The fields of a new network config; ``None``: the config's default applies.

    ``site_modes`` are ``SITE=MODE`` items (``--site-mode``), in the order given.
    """

    network: str
    backend: str = VXLAN_WIREGUARD
    subnet_len: int | None = None
    subnet_min: str | None = None
    subnet_max: str | None = None
    vni: int | None = None
    port: int | None = None
    mtu: int | None = None
    listen_port: int | None = None
    keepalive: int | None = None
    topology: str | None = None
    site_modes: tuple[str, ...] = ()
    dns_zone: str | None = None


def _present(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` without those not given (``None``): the config's defaults apply."""
    return {key: value for key, value in fields.items() if value is not None}


def init_config(req: InitRequest) -> NetworkConfig:
    """The flannel-format config of ``req``, validated; ``ConfigError`` says what is wrong
    (a bad backend before a bad network or subnet range)."""
    raw = _present(
        {"Network": req.network, "SubnetLen": req.subnet_len, "SubnetMin": req.subnet_min,
         "SubnetMax": req.subnet_max}
    )  # fmt: skip
    back = _present(
        {"Type": req.backend, "VNI": req.vni, "Port": req.port, "MTU": req.mtu,
         "ListenPort": req.listen_port, "PersistentKeepaliveInterval": req.keepalive}
    )  # fmt: skip
    parse_backend(back)
    raw["Backend"] = back
    if req.topology is not None or req.site_modes:
        sites = dict(item.partition("=")[::2] for item in req.site_modes)
        raw["Topology"] = {"Mode": req.topology or "mesh", "Sites": sites}
    if req.dns_zone is not None:
        raw["DNSZone"] = req.dns_zone
    return parse_config(json.dumps(raw))
