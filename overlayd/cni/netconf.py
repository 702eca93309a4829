"""The plugin's network configuration (stdin) and the delegate configuration built from it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from overlayd.cni.errors import CniError, Code
from overlayd.disk.subnet_file import SubnetFile

# ``typing`` costs milliseconds to import on every plugin run; annotations are strings.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_SUBNET_FILE = Path("/run/overlayd/subnet.env")
DEFAULT_DATA_DIR = Path("/var/lib/cni/overlay")
DEFAULT_NAMES_SOCKET = Path("/run/overlayd/names.sock")  # the daemon's (docs/dns.md)
DEFAULT_BRIDGE = "cni-overlay"
DEFAULT_DELEGATE_TYPE = "bridge"

# Keys of the delegate configuration that the runtime or this plugin own; an override in
# ``delegate`` would make the cached configuration disagree with what the runtime sent.
_RESERVED_DELEGATE_KEYS = frozenset({"name", "cniVersion", "runtimeConfig", "args", "prevResult"})
# Keys the runtime may inject that change per invocation and are not part of the
# attachment's shape (CHECK ignores them when comparing with the cached configuration).
VOLATILE_KEYS = frozenset({"cniVersion", "runtimeConfig", "args", "prevResult"})


def _is_plain_name(text: str) -> bool:
    """The spec's network-name rule; also keeps names safe as directory names."""
    return (
        bool(text)
        and text[0].isascii()
        and text[0].isalnum()
        and all((c.isascii() and c.isalnum()) or c in "_.-" for c in text)
    )


@dataclass(frozen=True)
class NetConf:
    """The ``"type": "overlay"`` entry of a conflist, as the runtime passes it on stdin."""

    cni_version: str
    name: str
    subnet_file: Path = DEFAULT_SUBNET_FILE
    data_dir: Path = DEFAULT_DATA_DIR
    names_socket: Path | None = DEFAULT_NAMES_SOCKET  # None ("namesSocket": ""): no names
    delegate: Mapping[str, Any] = field(default_factory=dict)
    runtime_config: Mapping[str, Any] | None = None
    args: Mapping[str, Any] | None = None
    prev_result: Mapping[str, Any] | None = None
    valid_attachments: frozenset[tuple[str, str]] | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any], cni_version: str, command: str) -> NetConf:
        """Validate the stdin object (whose already checked version is ``cni_version``);
        errors are code 7 (invalid network config)."""
        name = raw.get("name")
        if not isinstance(name, str) or not _is_plain_name(name):
            raise _invalid("'name' must be a network name (letters, digits, '_', '.', '-')")
        delegate = _optional(raw, "delegate", dict) or {}
        reserved = sorted(_RESERVED_DELEGATE_KEYS & delegate.keys())
        if reserved:
            raise _invalid(f"'delegate' must not set {', '.join(reserved)}")
        delegate_type = delegate.get("type", DEFAULT_DELEGATE_TYPE)
        if not isinstance(delegate_type, str) or not _is_plain_name(delegate_type):
            raise _invalid("'delegate.type' must be a plugin name")
        subnet_file = _optional(raw, "subnetFile", str)
        data_dir = _optional(raw, "dataDir", str)
        names_socket = _optional(raw, "namesSocket", str)
        return cls(
            cni_version=cni_version,
            name=name,
            subnet_file=Path(subnet_file) if subnet_file else DEFAULT_SUBNET_FILE,
            data_dir=Path(data_dir) if data_dir else DEFAULT_DATA_DIR,
            names_socket=(
                DEFAULT_NAMES_SOCKET
                if names_socket is None
                else Path(names_socket)
                if names_socket
                else None
            ),
            delegate=delegate,
            runtime_config=_optional(raw, "runtimeConfig", dict),
            args=_optional(raw, "args", dict),
            prev_result=_optional(raw, "prevResult", dict),
            valid_attachments=_attachments(raw) if command == "GC" else None,
        )


def _invalid(details: str) -> CniError:
    return CniError(Code.INVALID_NETWORK_CONFIG, "invalid network configuration", details)


def _optional(raw: Mapping[str, Any], key: str, kind: type[Any]) -> Any:
    """``raw[key]`` if present and of type ``kind``, ``None`` if absent."""
    value = raw.get(key)
    if value is not None and not isinstance(value, kind):
        raise _invalid(f"{key!r} must be a JSON {'object' if kind is dict else 'string'}")
    return value


def _attachments(raw: Mapping[str, Any]) -> frozenset[tuple[str, str]]:
    """The GC keep-list. libcni 1.2 also sends it as ``cni.dev/attachments`` (a name from a
    draft of the spec), so either key is accepted."""
    entries = raw.get("cni.dev/valid-attachments", raw.get("cni.dev/attachments"))
    if entries is None:
        raise _invalid("GC needs 'cni.dev/valid-attachments'")
    if not isinstance(entries, list):
        raise _invalid("'cni.dev/valid-attachments' must be a list")
    valid = set()
    for entry in entries:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("containerID"), str)
            and isinstance(entry.get("ifname"), str)
        ):
            raise _invalid(f"attachment {entry!r} needs string 'containerID' and 'ifname'")
        valid.add((entry["containerID"], entry["ifname"]))
    return frozenset(valid)


def delegate_config(conf: NetConf, subnet: SubnetFile, cni_version: str) -> dict[str, Any]:
    """The ``bridge`` + ``host-local`` configuration for this node's subnet.

    Routes carry an explicit ``gw``: Debian's bridge 1.1.1 CHECK compares a route without
    one against the kernel's and always fails. ``delegate`` overrides are applied last;
    object values (e.g. ``ipam``) are merged one level deep so an override can add
    ``ipam.dataDir`` without restating the ranges.
    """
    gateway = str(subnet.subnet.ip)
    config: dict[str, Any] = {
        "cniVersion": cni_version,
        "name": conf.name,
        "type": DEFAULT_DELEGATE_TYPE,
        "bridge": DEFAULT_BRIDGE,
        "isGateway": True,
        # OVERLAY_IPMASQ=true means overlayd masquerades itself (overlayd.dataplane.masq,
        # which leaves traffic inside the overlay alone); a second masquerade in the bridge
        # would hide container addresses from other nodes. Only when overlayd does not
        # masquerade does the bridge do it (flannel's rule).
        "ipMasq": not subnet.ipmasq,
        "mtu": subnet.mtu,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": str(subnet.subnet.network), "gateway": gateway}]],
            "routes": [{"dst": str(subnet.network), "gw": gateway}],
        },
    }
    for key, value in conf.delegate.items():
        current = config.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            config[key] = {**current, **value}
        else:
            config[key] = value
    if conf.runtime_config is not None:
        config["runtimeConfig"] = conf.runtime_config
    if conf.args is not None:
        config["args"] = conf.args
    return config


def shape_differences(cached: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """Top-level keys whose values differ between two delegate configurations, ignoring
    the per-invocation keys in ``VOLATILE_KEYS``."""
    keys = (cached.keys() | expected.keys()) - VOLATILE_KEYS
    return sorted(k for k in keys if cached.get(k) != expected.get(k))
