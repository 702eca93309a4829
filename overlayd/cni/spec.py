"""What the CNI spec fixes: versions, the invocation environment, and result layouts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from overlayd.cni.errors import CniError, Code

# ``typing`` costs milliseconds to import on every plugin run; annotations are strings.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = SUPPORTED_VERSIONS[-1]
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")

# The first spec version that defines each command; older configs must not use it.
_COMMAND_SINCE = {"CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0"}
# Environment variables each command needs (CNI_NETNS is optional for DEL).
_REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": (),
    "VERSION": (),
}
_ID_EXTRA_CHARS = frozenset("_.-")


def version_key(version: str) -> tuple[int, int, int]:
    """``"1.0.0"`` → ``(1, 0, 0)``; ``ValueError`` for anything that is not x.y.z."""
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"{version!r} is not a version")
    return int(parts[0]), int(parts[1]), int(parts[2])


def best_common_version(requested: str, offered: Iterable[str]) -> str | None:
    """The highest version in ``offered`` that we support and that is not newer than
    ``requested``; ``None`` if there is none."""
    limit = version_key(requested)
    usable = [v for v in offered if v in SUPPORTED_VERSIONS and version_key(v) <= limit]
    return max(usable, key=version_key, default=None)


def require_version(version: str, command: str) -> None:
    """Raise code 1 unless ``version`` is supported and defines ``command``."""
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            Code.INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f"config is {version!r}, plugin supports {', '.join(SUPPORTED_VERSIONS)}",
        )
    since = _COMMAND_SINCE.get(command)
    if since is not None and version_key(version) < version_key(since):
        raise CniError(
            Code.INCOMPATIBLE_VERSION,
            f"config version {version} does not allow {command}",
            f"{command} needs cniVersion {since} or later",
        )


@dataclass(frozen=True)
class Invocation:
    """The ``CNI_*`` environment of one plugin run."""

    command: str
    container_id: str
    netns: str
    ifname: str
    path: tuple[str, ...]
    args: str = ""  # CNI_ARGS: K=V pairs joined by ';' (container names come from them)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Invocation:
        """Validate the environment the way the spec describes it (errors are code 4)."""
        command = environ.get("CNI_COMMAND", "")
        if command not in COMMANDS:
            what = f"unknown CNI_COMMAND {command!r}" if command else "CNI_COMMAND is not set"
            raise CniError(Code.INVALID_ENVIRONMENT, what, f"expected one of {', '.join(COMMANDS)}")
        missing = [name for name in _REQUIRED_ENV[command] if not environ.get(name)]
        if missing:
            raise CniError(
                Code.INVALID_ENVIRONMENT,
                f"{command} needs environment variables {', '.join(missing)}",
            )
        invocation = cls(
            command=command,
            container_id=environ.get("CNI_CONTAINERID", ""),
            netns=environ.get("CNI_NETNS", ""),
            ifname=environ.get("CNI_IFNAME", ""),
            path=tuple(p for p in environ.get("CNI_PATH", "").split(":") if p),
            args=environ.get("CNI_ARGS", ""),
        )
        if invocation.container_id:
            check_container_id(invocation.container_id)
        if invocation.ifname:
            check_ifname(invocation.ifname)
        return invocation


def check_container_id(container_id: str) -> None:
    """The spec's container ID rule; it also makes the ID safe in a file name."""
    if not (
        container_id[:1].isascii()
        and container_id[:1].isalnum()
        and all((c.isascii() and c.isalnum()) or c in _ID_EXTRA_CHARS for c in container_id)
    ):
        raise CniError(
            Code.INVALID_ENVIRONMENT,
            f"invalid container ID {container_id!r}",
            "it must start with a letter or digit and contain only letters, digits, '_', '.', '-'",
        )


def check_ifname(ifname: str) -> None:
    """Linux interface name rules (``dev_valid_name``), so the name is safe in a file name."""
    if len(ifname) > 15 or ifname in (".", "..") or any(c in "/:" or c.isspace() for c in ifname):
        raise CniError(Code.INVALID_ENVIRONMENT, f"invalid interface name {ifname!r}")


def convert_result(result: Mapping[str, Any], to_version: str) -> dict[str, Any]:
    """Rewrite a 0.3.x/0.4.0/1.x result for ``to_version``.

    The layouts differ only in ``ips[].version``, which 0.3.x and 0.4.0 require and 1.0.0
    dropped; fields added by 1.1.0 are optional and ignored by older readers.
    """
    converted = dict(result)
    converted["cniVersion"] = to_version
    legacy = version_key(to_version) < (1, 0, 0)
    ips = []
    for entry in result.get("ips", []):
        ip = {key: value for key, value in entry.items() if key != "version"}
        if legacy:
            ip["version"] = "6" if ":" in str(entry.get("address", "")) else "4"
        ips.append(ip)
    if "ips" in result:
        converted["ips"] = ips
    return converted
