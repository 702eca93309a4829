"""Container names: the plugin tells the local overlayd which name an attachment got.

After a successful ADD the plugin sends one ``Registration`` line (overlayd/values/names.py)
with the container's name and address to the daemon's Unix socket (``namesSocket``,
default ``/run/overlayd/names.sock``, owned by root); after DEL one without an address.
The daemon publishes it, and every daemon answers ``<name>.<node>.<zone>`` (docs/dns.md).
A name is a convenience: a daemon that is down or refuses never fails ADD or DEL (the
reason goes to the debug log). The name: ``K8S_POD_NAME`` from ``CNI_ARGS`` (kubelet's,
and podman's with its CNI backend: the container name), else the container id.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

from overlayd.values.registration import Registration, container_label, is_container_id

TIMEOUT = 1.0  # seconds: the daemon answers in milliseconds; a stuck one must not stall ADD

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def cni_arg(cni_args: str, key: str) -> str:
    """``key``'s value in ``CNI_ARGS`` (``K1=V1;K2=V2``), "" if absent."""
    for item in cni_args.split(";"):
        name, sep, value = item.partition("=")
        if sep and name.strip() == key:
            return value.strip()
    return ""


def result_address(result: Mapping[str, Any], subnet: IPv4Network) -> IPv4Address | None:
    """The attachment's address in ``subnet`` from a CNI result (0.4.0 and later)."""
    ips: Iterable[Any] = result.get("ips") or ()
    for item in ips:
        text = item.get("address") if isinstance(item, dict) else None
        try:
            address = IPv4Interface(text).ip if isinstance(text, str) else None
        except ValueError:
            continue
        if address is not None and address in subnet:
            return address
    return None


def added(container_id: str, cni_args: str, address: IPv4Address) -> Registration | None:
    """The registration of an attachment that got ``address`` (None: it cannot be named)."""
    if not is_container_id(container_id):
        return None
    label = container_label(cni_arg(cni_args, "K8S_POD_NAME"), container_id)
    return Registration(container_id, label, address) if label else None


def removed(container_id: str) -> Registration | None:
    return Registration(container_id) if is_container_id(container_id) else None


def send(path: Path, registration: Registration) -> str:
    """Tell the daemon; its one-line answer (``ok`` or ``error: …``), or why it could not."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(str(path))
            sock.sendall(registration.to_line())
            return sock.makefile("rb").readline(512).decode("utf-8", "replace").strip()
    except OSError as exc:
        return f"error: {path}: {exc.strerror or exc}"
