"""Where the status port listens (``--healthz-ip``): parsing and exposure rules (pure).

The status port tells node names, subnets, sites, underlay addresses (private ones too) and
RTTs: nothing outside the host should read it unless an operator says so. The default is
loopback only. ``overlay`` adds the node's own overlay address once its lease is known, for
monitoring over the overlay; any other address (``0.0.0.0`` included) is the operator's
explicit choice and is warned about.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address

from overlayd.values.errors import ConfigError
from overlayd.values.text import quote

IPAddress = IPv4Address | IPv6Address

OVERLAY = "overlay"
"""The ``--healthz-ip`` value that means "this node's overlay address, once leased"."""

DEFAULT_LISTEN = ("127.0.0.1",)


def address_order(address: IPAddress) -> tuple[int, int]:
    """Sort key for mixed IPv4 and IPv6 addresses (which do not compare)."""
    return address.version, int(address)


@dataclass(frozen=True)
class ListenSpec:
    """The fixed addresses to listen on, and whether to add the overlay address."""

    addresses: tuple[IPAddress, ...] = (IPv4Address("127.0.0.1"),)
    overlay: bool = False

    def binds(self, overlay_ip: IPv4Address | None) -> tuple[IPAddress, ...]:
        """Every address to listen on now (sorted): the fixed ones, plus the overlay
        address when asked for and known (and not already one of the fixed ones)."""
        found = set(self.addresses)
        if self.overlay and overlay_ip is not None:
            found.add(overlay_ip)
        return tuple(sorted(found, key=address_order))


LOOPBACK = ListenSpec()
"""The default: 127.0.0.1 only."""


def parse_listen(values: Iterable[str]) -> ListenSpec:
    """``--healthz-ip`` values (IP addresses or ``overlay``) as a ``ListenSpec``.

    Raises ``ConfigError`` for anything else (host names too: what a name resolves to is
    not something to guess for a port that must not leak).
    """
    addresses: set[IPAddress] = set()
    overlay = False
    for value in values:
        text = value.strip()
        if text == OVERLAY:
            overlay = True
            continue
        try:
            addresses.add(ip_address(text))
        except ValueError:
            raise ConfigError(
                f"--healthz-ip {quote(value)} is neither an IP address nor {OVERLAY!r}",
                hint="e.g. --healthz-ip 127.0.0.1 (the default), add --healthz-ip overlay "
                "to also serve on this node's overlay address",
            ) from None
    if not addresses and not overlay:
        return LOOPBACK
    return ListenSpec(tuple(sorted(addresses, key=address_order)), overlay)


def exposure(address: IPAddress, overlay: IPv4Network | None = None) -> str | None:
    """Who can read the status port on ``address`` (None: only this host).

    ``overlay`` is the overlay network when ``address`` is this node's overlay address.
    """
    if overlay is not None:
        return f"every host and container on the overlay network {overlay}"
    if address.is_loopback:
        return None
    if address.is_unspecified:
        return "every network this host is on (the internet too, if it has a public address)"
    return f"everything that can reach {address}"
