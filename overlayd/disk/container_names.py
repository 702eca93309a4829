"""This node's registered container names, kept in the state dir across restarts.

A restarting daemon binds its lease to a fresh etcd lease and revokes the old one
(docs/etcd-schema.md, "Allocation"), which takes the container names bound to it along.
So the daemon keeps what the CNI plugin registered in ``--state-dir/container-names``
(one JSON object per line: the record's key under ``names/`` and its value) and publishes it again.
A file that cannot be read names nothing (the containers get their names back at their
next ADD); a line that does not decode is skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from overlayd.disk.atomic import write_atomically
from overlayd.values.errors import LeaseFormatError
from overlayd.values.names import ContainerName, decode_container

FILE = "container-names"


def save_names(path: Path, names: Iterable[ContainerName]) -> None:
    """Keep ``names`` in ``path`` (atomically, 0600); OSError if it cannot be written."""
    lines = (
        json.dumps({"Key": n.key_part(), "Value": n.to_json()}, sort_keys=True)
        for n in sorted(names)
    )
    write_atomically(path, "".join(f"{line}\n" for line in lines), 0o600)


def load_names(path: Path) -> list[ContainerName]:
    """The names kept in ``path`` (none when it is missing or unreadable)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return []
    found = []
    for line in text.splitlines():
        try:
            raw = json.loads(line)
            found.append(decode_container(raw["Key"], raw["Value"].encode()))
        except (ValueError, KeyError, TypeError, AttributeError, LeaseFormatError):
            continue
    return found
