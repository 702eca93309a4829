"""What a node persists in its state dir so a restart is the same node.

``node-id``   random id, with the node name the node's identity in its lease
``vtep-mac``  the VXLAN device's MAC, so peers' neighbour entries stay valid
``subnet``    the subnet last held, tried first when the lease has expired meanwhile
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

from overlayd.disk.atomic import write_atomically
from overlayd.values.errors import ConfigError
from overlayd.values.kernel_state import MacAddress


def _random_mac() -> MacAddress:
    raw = bytearray(secrets.token_bytes(6))
    raw[0] = (raw[0] & 0xFE) | 0x02  # unicast, locally administered
    return MacAddress.from_bytes(bytes(raw))


@dataclass(frozen=True)
class NodeIdentity:
    node_id: str
    vtep_mac: MacAddress


class StateDir:
    """The node's state directory (``--state-dir``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _ensure(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(f"cannot create state dir {self.path}: {exc.strerror}") from None

    def _read(self, name: str) -> str | None:
        try:
            return (self.path / name).read_text().strip()
        except (FileNotFoundError, UnicodeDecodeError):
            return None  # missing or damaged: the caller creates it anew

    def identity(self) -> NodeIdentity:
        """Load the node id and VTEP MAC, creating them on first start."""
        self._ensure()
        node_id = self._read("node-id")
        if not node_id:
            node_id = secrets.token_hex(16)
            write_atomically(self.path / "node-id", node_id + "\n")
        mac_text = self._read("vtep-mac")
        try:
            mac = MacAddress.parse(mac_text) if mac_text else None
        except ValueError:
            mac = None  # a damaged file: a new MAC is better than no daemon
        if mac is None:
            mac = _random_mac()
            write_atomically(self.path / "vtep-mac", str(mac) + "\n")
        return NodeIdentity(node_id, mac)

    def remembered_subnet(self) -> IPv4Network | None:
        text = self._read("subnet")
        try:
            return IPv4Network(text) if text else None
        except ValueError:
            return None

    def remember_subnet(self, subnet: IPv4Network) -> None:
        self._ensure()
        write_atomically(self.path / "subnet", f"{subnet}\n")
