"""The daemon's host-side effects besides the data plane, and its clock, as values.

The composition root (overlayd/cli/daemon_main.py) uses the real ones (the defaults);
component tests pass fakes instead of patching: nft scripts (ingress filter, masquerade),
systemd readiness, the IPv4 forwarding sysctl, systemd-resolved's per-link DNS. Nothing
here runs at import.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from overlayd.agent.sdnotify import sd_notify
from overlayd.dataplane.nft import list_table, run_nft
from overlayd.values.errors import KernelError


def enable_forwarding() -> None:
    """net.ipv4.ip_forward=1 (gateway topology); ``KernelError`` if it cannot be set."""
    try:
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    except OSError as exc:
        raise KernelError(f"cannot enable IPv4 forwarding: {exc.strerror}") from None


RESOLVED_DIR = Path("/run/systemd/resolve")  # exists while systemd-resolved runs


def route_zone(ifindex: int, server: IPv4Address, domains: tuple[str, ...]) -> bool:
    """With systemd-resolved: ask ``server`` (port 53) for ``domains`` (routing domains,
    ``~zone``) on link ``ifindex``, the overlay device (docs/dns.md). False when there is
    no systemd-resolved; ``KernelError`` when ``resolvectl`` refuses."""
    resolvectl = shutil.which("resolvectl")
    if resolvectl is None or not RESOLVED_DIR.is_dir():
        return False
    for argv in (
        [resolvectl, "dns", str(ifindex), str(server)],
        [resolvectl, "domain", str(ifindex), *(f"~{d}" for d in domains)],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        if done.returncode != 0:
            raise KernelError(f"{' '.join(argv[1:])}: {done.stderr.strip()[:200]}")
    return True


def _notify(state: str) -> None:
    sd_notify(state)


@dataclass(frozen=True)
class Host:
    """What the daemon does to the host outside netlink (all blocking: run off the loop).

    ``run_nft`` applies an nft script and ``read_nft(family, table)`` lists a table
    (None: absent), as overlayd/dataplane/nft.py's; ``notify`` is sd_notify; ``enable_forwarding``
    sets the sysctl a gateway needs; ``route_zone`` points systemd-resolved at the DNS
    responder for the zone (False: no systemd-resolved).
    """

    run_nft: Callable[[str], None] = run_nft
    read_nft: Callable[[str, str], str | None] = list_table
    notify: Callable[[str], None] = _notify
    enable_forwarding: Callable[[], None] = enable_forwarding
    route_zone: Callable[[int, IPv4Address, tuple[str, ...]], bool] = route_zone


@dataclass(frozen=True)
class Clock:
    """``monotonic`` for durations and ages, ``wall`` for times shown to people."""

    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
