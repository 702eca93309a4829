"""The daemon's host-side effects besides the data plane, and its clock, as values.

The composition root (overlayd/cli/daemon_main.py) uses the real ones (the defaults);
component tests pass fakes instead of patching: nft scripts (ingress filter, masquerade),
systemd readiness, the IPv4 forwarding sysctl. Nothing here runs at import.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
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


def _notify(state: str) -> None:
    sd_notify(state)


@dataclass(frozen=True)
class Host:
    """What the daemon does to the host outside netlink (all blocking: run off the loop).

    ``run_nft`` applies an nft script and ``read_nft(family, table)`` lists a table
    (None: absent), as overlayd/dataplane/nft.py's; ``notify`` is sd_notify; ``enable_forwarding``
    sets the sysctl a gateway needs.
    """

    run_nft: Callable[[str], None] = run_nft
    read_nft: Callable[[str, str], str | None] = list_table
    notify: Callable[[str], None] = _notify
    enable_forwarding: Callable[[], None] = enable_forwarding


@dataclass(frozen=True)
class Clock:
    """``monotonic`` for durations and ages, ``wall`` for times shown to people."""

    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
