"""Following the kernel's route and neighbour notifications for overlayd's overlay device.

``Monitor`` reads RTNLGRP_IPV4_ROUTE and RTNLGRP_NEIGH notifications on a background
thread and hands them over as ``KernelEvent``s (or ``ResyncNeeded`` when some were lost);
``KernelEvent.apply_to`` folds one into a picture of the kernel (``KernelState``). The
socket lives in the network namespace of the calling process.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

from overlayd.dataplane.netlink.nlmsg import DecodeError
from overlayd.dataplane.netlink.nlsock import (
    NETLINK_ADD_MEMBERSHIP,
    RECV_SIZE,
    RTNLGRP_IPV4_ROUTE,
    RTNLGRP_NEIGH,
    SOL_NETLINK,
    open_socket,
)
from overlayd.dataplane.netlink.rtnl_decode import Decoded, decode
from overlayd.dataplane.netlink.rtnl_messages import (
    RT_TABLE_MAIN,
    Action,
    EntryMessage,
    FdbMessage,
    NeighMessage,
    RouteMessage,
)
from overlayd.values.errors import KernelError
from overlayd.values.kernel_state import KernelState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KernelEvent:
    """A kernel notification about an entry on (or displacing one on) the device.

    ``owned`` says whether the entry is one overlayd would have created (see
    ``owned_on`` of the message classes). Use ``apply_to`` to keep a picture of the
    kernel current.
    """

    message: EntryMessage
    owned: bool

    def apply_to(self, picture: KernelState) -> bool:
        """Update ``picture`` (its dicts, in place) with this event; True if it changed.

        Owned NEW sets the entry; owned DEL removes it if the picture still holds that
        value. A non-owned NEW under one of our keys (another writer replaced our route,
        or turned our neighbour/FDB entry into a non-permanent one) removes ours, so the
        next diff puts it back. Non-owned DELs leave ours alone.
        """
        msg = self.message
        if isinstance(msg, RouteMessage):
            # Only a route with the same key (dst, tos, metric 0) can take our place.
            displaced = msg.replaced and msg.priority == 0
            return _fold(picture.routes, msg.dst, msg.entry, msg.action, self.owned, displaced)
        if isinstance(msg, NeighMessage):
            return _fold(picture.neighs, msg.ip, msg.entry, msg.action, self.owned, True)
        return _fold(picture.fdbs, msg.mac, msg.entry, msg.action, self.owned, True)


K = TypeVar("K")
V = TypeVar("V")


def _fold(
    table: dict[K, V], key: K, entry: V | None, action: Action, owned: bool, displaced: bool
) -> bool:
    if owned and entry is not None and action is Action.NEW:
        if table.get(key) == entry:
            return False
        table[key] = entry
        return True
    if owned and key in table and table[key] == entry:
        del table[key]
        return True
    if not owned and action is Action.NEW and displaced and key in table:
        del table[key]
        return True
    return False


@dataclass(frozen=True)
class ResyncNeeded:
    """Notifications were lost (socket buffer overflow): dump the kernel state again."""

    reason: str


MonitorEvent = KernelEvent | ResyncNeeded


class Monitor:
    """Follows route and neighbour notifications for one device on a background thread.

    Subscribes to RTNLGRP_IPV4_ROUTE and RTNLGRP_NEIGH and calls ``on_events`` with the
    events of each burst (everything readable without waiting), in kernel order:
    routes in table main out of ``ifindex`` (or replacing one of any device), IPv4
    neighbours and FDB entries on ``ifindex``. If the kernel drops notifications,
    ``ResyncNeeded`` is delivered; the caller should then dump.

    Start the monitor before the initial ``Rtnl.dump`` so nothing between the two is
    missed. ``on_events`` runs on the monitor thread (do not call ``stop`` from it); an
    exception in it is logged and the monitor carries on. If the socket itself fails,
    a last ``ResyncNeeded`` is delivered and the thread ends (``running`` turns False).
    """

    def __init__(
        self,
        ifindex: int,
        on_events: Callable[[list[MonitorEvent]], None],
        *,
        rcvbuf: int = 64 << 20,
    ) -> None:
        self.ifindex = ifindex
        self._on_events = on_events
        self._sock = open_socket(rcvbuf, 1 << 16)
        try:
            for group in (RTNLGRP_IPV4_ROUTE, RTNLGRP_NEIGH):
                self._sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
        except OSError as exc:
            self._sock.close()
            raise KernelError(f"cannot subscribe to netlink groups: {exc.strerror}") from exc
        self._sock.setblocking(False)
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(
            target=self._run, name=f"netlink-monitor-{ifindex}", daemon=True
        )
        self._buf = bytearray(RECV_SIZE)

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop the thread and close the socket; idempotent."""
        if self._wake_w < 0:
            return
        os.write(self._wake_w, b"x")
        if self._thread.is_alive():
            self._thread.join()
        self._sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._wake_w = -1

    def __enter__(self) -> Monitor:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._wake_r in ready:
                return
            try:
                events = self._drain()
            except OSError as exc:
                log.error("netlink monitor socket failed: %s", exc)
                self._deliver([ResyncNeeded(f"monitor socket failed: {exc.strerror}")])
                return
            self._deliver(events)
            # not kept until the next notification: a batch after programming 5,000 peers
            # holds 30,000 events and their messages (~5 MB)
            del events

    def _deliver(self, events: list[MonitorEvent]) -> None:
        if events:
            try:
                self._on_events(events)
            except Exception:
                log.exception("netlink monitor callback failed")

    def _drain(self) -> list[MonitorEvent]:
        """Every event readable right now."""
        events: list[MonitorEvent] = []
        while True:
            try:
                n = self._sock.recv_into(self._buf)
            except BlockingIOError:
                return events
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                events.append(ResyncNeeded("netlink notifications lost (ENOBUFS)"))
                continue
            try:
                for msg in decode(memoryview(self._buf)[:n]):
                    event = self._event(msg)
                    if event is not None:
                        events.append(event)
            except DecodeError as exc:
                events.append(ResyncNeeded(f"undecodable notification: {exc}"))

    def _event(self, msg: Decoded) -> KernelEvent | None:
        if isinstance(msg, RouteMessage):
            if msg.table != RT_TABLE_MAIN:
                return None
            if msg.oif != self.ifindex and not msg.replaced:
                return None
        elif isinstance(msg, NeighMessage | FdbMessage):
            if msg.ifindex != self.ifindex:
                return None
        else:
            return None
        return KernelEvent(msg, msg.owned_on(self.ifindex))
