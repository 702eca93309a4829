"""The subnet file (``subnet.env``): what the CNI plugin and other local tools read.

Format (shell-sourceable ``KEY=value`` lines, like flannel's ``subnet.env``)::

    OVERLAY_NETWORK=10.244.0.0/16
    OVERLAY_SUBNET=10.244.3.1/24     # first host address of this node's subnet / length
    OVERLAY_MTU=1450
    OVERLAY_IPMASQ=true

Written atomically (temp file in the same directory, fsync, rename), so a reader never
sees half a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path

from overlayd.disk.atomic import write_atomically
from overlayd.values.errors import ConfigError


@dataclass(frozen=True)
class SubnetFile:
    """The facts a node publishes locally about its lease."""

    network: IPv4Network
    subnet: IPv4Interface  # first host address of the node's subnet, with the subnet length
    mtu: int
    ipmasq: bool

    def render(self) -> str:
        return (
            f"OVERLAY_NETWORK={self.network}\n"
            f"OVERLAY_SUBNET={self.subnet}\n"
            f"OVERLAY_MTU={self.mtu}\n"
            f"OVERLAY_IPMASQ={'true' if self.ipmasq else 'false'}\n"
        )

    @classmethod
    def parse(cls, text: str) -> SubnetFile:
        values: dict[str, str] = {}
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition("=")
            if not sep:
                raise ConfigError(f"subnet file: line {raw!r} is not KEY=value")
            values[key.strip()] = value.strip()
        try:
            return cls(
                network=IPv4Network(values["OVERLAY_NETWORK"]),
                subnet=IPv4Interface(values["OVERLAY_SUBNET"]),
                mtu=int(values["OVERLAY_MTU"]),
                ipmasq=values.get("OVERLAY_IPMASQ", "false").lower() == "true",
            )
        except KeyError as exc:
            raise ConfigError(f"subnet file: missing {exc.args[0]}") from None
        except ValueError as exc:
            raise ConfigError(f"subnet file: {exc}") from None


def write_subnet_file(path: Path, content: SubnetFile) -> None:
    """Write ``content`` to ``path`` atomically (readers see the old or the new file)."""
    write_atomically(path, content.render())


def read_subnet_file(path: Path) -> SubnetFile:
    """Read and parse a subnet file; ``ConfigError`` if it is missing or malformed."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"subnet file {path} does not exist", hint="is overlayd running on this host?"
        ) from None
    return SubnetFile.parse(text)
