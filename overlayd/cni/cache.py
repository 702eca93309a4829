"""The per-attachment cache of delegate configurations.

ADD stores the exact configuration it hands to the delegate *before* running it, so DEL,
CHECK and GC can replay it even if the subnet file changed or vanished meanwhile, or ADD
died halfway. Layout: ``<dataDir>/<network>/<containerID>@<ifname>`` holding the JSON; a
container ID never contains ``@`` (spec rule, checked in ``spec``), so the file name splits
unambiguously and GC of one network never touches another network's entries.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from overlayd.cni.errors import CniError, Code

# ``typing`` costs milliseconds to import on every plugin run; annotations are strings.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_SEPARATOR = "@"


@dataclass(frozen=True)
class Attachment:
    """One container interface on one network: the key of a cache entry."""

    network: str
    container_id: str
    ifname: str

    def path(self, data_dir: Path) -> Path:
        return data_dir / self.network / f"{self.container_id}{_SEPARATOR}{self.ifname}"


def store(data_dir: Path, attachment: Attachment, config: dict[str, Any]) -> None:
    """Write the entry atomically and durably: a torn or empty entry after a crash would
    make DEL fail for ever (the runtime retries DEL until it succeeds)."""
    target = attachment.path(data_dir)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = target.with_name(f".{target.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(config).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)


def load(data_dir: Path, attachment: Attachment) -> dict[str, Any] | None:
    """The cached configuration, or ``None`` when there is no entry."""
    path = attachment.path(data_dir)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise CniError(Code.DECODING_FAILURE, f"corrupt cache entry {path}", str(exc)) from None
    if not isinstance(config, dict):
        raise CniError(Code.DECODING_FAILURE, f"corrupt cache entry {path}", "not a JSON object")
    return config


def remove(data_dir: Path, attachment: Attachment) -> None:
    attachment.path(data_dir).unlink(missing_ok=True)


def entries(data_dir: Path, network: str) -> Iterator[Attachment]:
    """The attachments cached for ``network`` (leftover temp files are skipped)."""
    try:
        names = sorted(os.listdir(data_dir / network))
    except FileNotFoundError:
        return
    for name in names:
        container_id, sep, ifname = name.partition(_SEPARATOR)
        if sep and not name.startswith("."):
            yield Attachment(network, container_id, ifname)
