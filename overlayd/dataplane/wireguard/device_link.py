"""The WireGuard device as a network interface, for both drivers: look it up, create a
kernel one, bring it up with its MTU, delete it.

Done with ``netlink.link.Links``, the data plane's one link manager, whose
``KernelError`` is re-raised here as ``WireGuardError``: what every driver method raises.
``Links`` is bound to the thread that uses it; the drivers run on the data plane's netlink
thread, as the ``Links`` they are given does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from overlayd.dataplane.netlink.link import LinkInfo, Links
from overlayd.values.errors import KernelError, WireGuardError


@contextmanager
def _as_wireguard_error() -> Iterator[None]:
    try:
        yield
    except KernelError as exc:
        raise WireGuardError(str(exc), exc.hint or None) from None


class DeviceLink:
    """The interface called ``ifname`` in the namespace ``links`` works in."""

    def __init__(self, links: Links, ifname: str) -> None:
        self.ifname = ifname
        self._links = links

    def find(self) -> LinkInfo | None:
        """The interface now, or None if there is none."""
        with _as_wireguard_error():
            return self._links.find(self.ifname)

    def create_kernel(self) -> bool:
        """Create it as a kernel WireGuard device; False when the kernel has no WireGuard."""
        with _as_wireguard_error():
            return self._links.create_wireguard(self.ifname)

    def set_up(self, mtu: int | None) -> None:
        """Bring it up and set its MTU (when given and different)."""
        with _as_wireguard_error():
            link = self._links.find(self.ifname)
            if link is None:
                raise WireGuardError(f"WireGuard device {self.ifname} vanished")
            self._links.set_up(link, mtu)

    def delete(self) -> None:
        """Delete it if it exists."""
        with _as_wireguard_error():
            link = self._links.find(self.ifname)
            if link is not None:
                self._links.delete(link)
