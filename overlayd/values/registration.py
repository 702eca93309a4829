"""What the CNI plugin tells its daemon about a container attachment (pure, light).

One JSON line on the daemon's Unix socket (docs/dns.md): ``{"ID", "IP", "Name"}`` after
ADD, ``{"ID"}`` after DEL. Kept apart from overlayd/values/names.py so that the plugin,
which runs for every container, imports little.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from overlayd.values.errors import LeaseFormatError
from overlayd.values.lease_rules import MAX_LABEL, is_label
from overlayd.values.text import quote

MAX_CONTAINER_ID = 64
MAX_REGISTRATION = 1024
"""A registration line's size limit on the daemon's Unix socket."""

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def is_container_id(text: str) -> bool:
    """A container id as a key part: up to 64 of [A-Za-z0-9._-], not starting with . or -."""
    return len(text) <= MAX_CONTAINER_ID and _ID.fullmatch(text) is not None


def container_label(name: str, container_id: str) -> str:
    """The DNS label a container is known by: its runtime name lower-cased when that is a
    label, else the first 12 characters of its id (as ``podman ps`` shows it)."""
    if is_label(name):
        return name.lower()
    short = container_id[:12].lower()
    return short if is_label(short) else ""


@dataclass(frozen=True, slots=True)
class Registration:
    """What the CNI plugin tells its daemon: attachment ``container_id`` got ``address``
    (ADD, ``name`` given) or is gone (DEL, ``address`` None)."""

    container_id: str
    name: str = ""
    address: IPv4Address | None = None

    def to_line(self) -> bytes:
        body: dict[str, Any] = {"ID": self.container_id}
        if self.address is not None:
            body |= {"IP": str(self.address), "Name": self.name}
        return json.dumps(body, sort_keys=True).encode() + b"\n"


def decode_registration(line: bytes) -> Registration:
    """A registration line, checked; ``LeaseFormatError`` when it is not one."""
    if len(line) > MAX_REGISTRATION:
        raise LeaseFormatError(f"registration is {len(line)} bytes, at most {MAX_REGISTRATION}")
    try:
        raw = json.loads(line)
    except (ValueError, RecursionError):
        raise LeaseFormatError("registration is not JSON") from None
    if not isinstance(raw, dict):
        raise LeaseFormatError("registration must be a JSON object")
    container_id = raw.get("ID")
    if not isinstance(container_id, str) or not is_container_id(container_id):
        raise LeaseFormatError(f"registration ID {quote(container_id)} is not a container id")
    if raw.get("IP") is None:
        return Registration(container_id)
    name = raw.get("Name")
    if not isinstance(name, str) or len(name) > MAX_LABEL or not is_label(name):
        raise LeaseFormatError(f"registration Name {quote(name)} is not a DNS label")
    try:
        address = IPv4Address(raw["IP"]) if isinstance(raw["IP"], str) else None
    except ValueError:
        address = None
    if address is None:
        raise LeaseFormatError(f"registration IP {quote(raw['IP'])} is not an address")
    return Registration(container_id, name.lower(), address)
