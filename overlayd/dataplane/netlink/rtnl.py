"""The bulk data-plane path: program, read back and watch overlayd's routes, neighbours
and FDB entries on its overlay device over a raw rtnetlink socket.

``Rtnl.apply`` packs many requests into each ``send`` (the kernel runs every message in
the buffer before the call returns) with NLM_F_ACK on each, then reads one ACK per
request and maps failures back to their entry by sequence number. ``Rtnl.dump`` reads
back only what overlayd owns. ``Monitor`` follows kernel notifications on a thread.

The sockets live in the network namespace of the calling process. Neither class is
thread-safe; ``Monitor`` calls its callback from its own thread.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import select
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import Any, Final, TypeVar

from overlayd.dataplane.netlink import codec
from overlayd.dataplane.netlink.codec import (
    Action,
    DecodeError,
    DoneMessage,
    EntryMessage,
    ErrorMessage,
    FdbMessage,
    NeighMessage,
    RouteMessage,
)
from overlayd.values.errors import KernelError
from overlayd.values.kernel_state import Changes, FdbEntry, KernelState, NeighEntry, RouteEntry

log = logging.getLogger(__name__)

# Not exported by Python's socket module (linux/socket.h, linux/netlink.h, rtnetlink.h).
SOL_NETLINK: Final = 270
NETLINK_ADD_MEMBERSHIP: Final = 1
NETLINK_CAP_ACK: Final = 10
NETLINK_EXT_ACK: Final = 11
NETLINK_GET_STRICT_CHK: Final = 12
SO_SNDBUFFORCE: Final = 32
SO_RCVBUFFORCE: Final = 33
RTNLGRP_NEIGH: Final = 3
RTNLGRP_IPV4_ROUTE: Final = 7

# Each queued ACK costs its skb's truesize (832 bytes measured on 6.x, with headroom for error
# ACKs carrying an extended-ACK text) against the receive buffer. If the ACKs of one
# send do not fit, the kernel drops them and we cannot tell what was applied, so a send
# carries at most rcvbuf / this many requests.
_ACK_BUDGET: Final = 2048
_MAX_BATCH: Final = 8192
_RECV_SIZE: Final = 1 << 20
_DUMP_RETRIES: Final = 5


class Op(Enum):
    """Whether an entry was being created/replaced or deleted."""

    SET = "set"
    DEL = "del"


Entry = RouteEntry | NeighEntry | FdbEntry


@dataclass(frozen=True)
class EntryError:
    """One request the kernel refused."""

    op: Op
    entry: Entry
    errno: int
    message: str

    def __str__(self) -> str:
        return f"{self.op.value} {self.entry}: {self.message}"


@dataclass(frozen=True)
class ApplyResult:
    """Outcome of ``Rtnl.apply``: how many requests succeeded, and every one that failed.

    ``ok`` counts requests acknowledged without error, including deletes of entries
    already gone (ENOENT/ESRCH) and creates that raced another writer (EEXIST).
    """

    ok: int
    errors: tuple[EntryError, ...] = ()

    @property
    def failed(self) -> bool:
        return bool(self.errors)

    def raise_for_errors(self) -> None:
        """Raise ``KernelError`` naming the first failures, if any request failed."""
        if not self.errors:
            return
        shown = "; ".join(str(e) for e in self.errors[:5])
        more = f" (and {len(self.errors) - 5} more)" if len(self.errors) > 5 else ""
        raise KernelError(
            f"{len(self.errors)} of {self.ok + len(self.errors)} netlink requests "
            f"failed: {shown}{more}"
        )


def _open_socket(rcvbuf: int, sndbuf: int) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        # FORCE variants ignore net.core.[rw]mem_max but need CAP_NET_ADMIN; fall back
        # to the capped ones so an unprivileged dump still works.
        for force, plain, size in (
            (SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf),
            (SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf),
        ):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, size)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, plain, size)
        sock.bind((0, 0))
    except OSError as exc:
        sock.close()
        raise KernelError(f"cannot open rtnetlink socket: {exc.strerror}") from exc
    return sock


def _setopt(sock: socket.socket, opt: int) -> bool:
    """Turn on a SOL_NETLINK option; False if this kernel does not know it."""
    try:
        sock.setsockopt(SOL_NETLINK, opt, 1)
    except OSError:
        return False
    return True


class Rtnl:
    """One rtnetlink socket for batched changes and dumps of overlayd's entries.

    ``timeout`` bounds each wait for the kernel; it only expires if the kernel never
    answers, which is reported as ``KernelError``. ``batch_size`` is how many requests
    go into one ``send``, derived from the receive buffer the kernel granted so that
    all their ACKs fit.
    """

    def __init__(
        self, *, rcvbuf: int = 32 << 20, sndbuf: int = 4 << 20, timeout: float = 10.0
    ) -> None:
        self._sock = _open_socket(rcvbuf, sndbuf)
        self._sock.settimeout(timeout)
        # Error ACKs then carry only the request header, not the request, and a text.
        _setopt(self._sock, NETLINK_CAP_ACK)
        _setopt(self._sock, NETLINK_EXT_ACK)
        # Lets dump requests carry filters (kernel >= 4.20); we filter in code anyway.
        self._strict = _setopt(self._sock, NETLINK_GET_STRICT_CHK)
        effective = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.batch_size = max(16, min(_MAX_BATCH, effective // _ACK_BUDGET))
        self._buf = bytearray(_RECV_SIZE)
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _next_seq(self) -> int:
        self._seq = (self._seq % 0xFFFFFFFF) + 1
        return self._seq

    def _recv(self) -> int:
        try:
            n = self._sock.recv_into(self._buf)
        except TimeoutError as exc:
            raise KernelError("the kernel did not answer a netlink request in time") from exc
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                raise KernelError(
                    "netlink receive buffer overflowed and replies were lost; "
                    "the kernel state must be read back (resync needed)"
                ) from exc
            raise KernelError(f"netlink receive failed: {exc.strerror}") from exc
        return n

    def _send(self, data: bytes) -> None:
        try:
            self._sock.send(data)
        except OSError as exc:
            raise KernelError(f"netlink send failed: {exc.strerror}") from exc

    def apply(self, ifindex: int, changes: Changes) -> ApplyResult:
        """Create/replace and delete the entries in ``changes`` on device ``ifindex``.

        Every request is sent, even after failures; refused ones are returned in
        ``ApplyResult.errors`` (call ``raise_for_errors`` to turn them into a
        ``KernelError``). Raises ``KernelError`` only if the socket itself fails, in
        which case it is unknown what was applied and the caller should dump.
        """
        ok = 0
        errors: list[EntryError] = []
        # encoded one batch at a time: 15,000 messages at once cost megabytes of RSS
        planned = self._encode(ifindex, changes)
        while chunk := list(itertools.islice(planned, self.batch_size)):
            pending = {seq: (op, entry) for seq, op, entry, _ in chunk}
            self._send(b"".join(data for _, _, _, data in chunk))
            for ack in self._acks(pending):
                op, entry = pending.pop(ack.seq)
                benign = codec.BENIGN_SET_ERRORS if op is Op.SET else codec.BENIGN_DEL_ERRORS
                if ack.error == 0 or ack.error in benign:
                    ok += 1
                else:
                    errors.append(EntryError(op, entry, ack.error, ack.describe()))
        return ApplyResult(ok, tuple(errors))

    def _encode(self, ifindex: int, changes: Changes) -> Iterator[tuple[int, Op, Entry, bytes]]:
        """Every request for ``changes`` with its sequence number, in kernel order.

        Neighbour and FDB entries come before the routes that use them, and routes are
        removed before the neighbours they point to.
        """
        groups: tuple[tuple[Op, tuple[Entry, ...], Callable[[int, int, Any], bytes]], ...] = (
            (Op.SET, changes.set_neighs, codec.encode_neigh_set),
            (Op.SET, changes.set_fdbs, codec.encode_fdb_set),
            (Op.SET, changes.set_routes, codec.encode_route_set),
            (Op.DEL, changes.del_routes, codec.encode_route_del),
            (Op.DEL, changes.del_neighs, codec.encode_neigh_del),
            (Op.DEL, changes.del_fdbs, codec.encode_fdb_del),
        )
        for op, entries, encode in groups:
            for entry in entries:
                seq = self._next_seq()
                yield seq, op, entry, encode(seq, ifindex, entry)

    def _acks(self, pending: dict[int, tuple[Op, Entry]]) -> Iterator[ErrorMessage]:
        """ACKs for the sequence numbers in ``pending`` until none is left.

        The caller pops each answered one. Replies to older requests (from a batch
        abandoned after an error) are skipped.
        """
        while pending:
            n = self._recv()
            fast = codec.decode_ack(self._buf, n)
            if fast is not None:
                if fast.seq in pending:
                    yield fast
                continue
            for msg in codec.decode(memoryview(self._buf)[:n]):
                if isinstance(msg, ErrorMessage) and msg.seq in pending:
                    yield msg

    def dump(self, ifindex: int) -> KernelState:
        """What overlayd owns on device ``ifindex``, read from the kernel.

        Routes of protocol ``OVERLAYD_RTPROT`` in table main out of ``ifindex``,
        permanent IPv4 neighbours on ``ifindex``, and permanent NTF_SELF FDB entries
        with an IPv4 remote on ``ifindex``. Nothing else is returned.
        """
        routes: list[RouteEntry] = []
        neighs: list[NeighEntry] = []
        fdbs: list[FdbEntry] = []
        requests: tuple[Callable[[int], bytes], ...] = (
            lambda seq: codec.encode_route_dump(seq, ifindex, filtered=self._strict),
            lambda seq: codec.encode_neigh_dump(seq, codec.AF_INET, ifindex, filtered=self._strict),
            lambda seq: codec.encode_neigh_dump(
                seq, codec.AF_BRIDGE, ifindex, filtered=self._strict
            ),
        )
        for request in requests:
            for msg in self._dump(request):
                if not msg.owned_on(ifindex):
                    continue
                if isinstance(msg, RouteMessage) and msg.entry is not None:
                    routes.append(msg.entry)
                elif isinstance(msg, NeighMessage) and msg.entry is not None:
                    neighs.append(msg.entry)
                elif isinstance(msg, FdbMessage) and msg.entry is not None:
                    fdbs.append(msg.entry)
        return KernelState.of(routes, neighs, fdbs)

    def _dump(self, request: Callable[[int], bytes]) -> list[EntryMessage]:
        """Run one dump; retried if the kernel says the table changed under it."""
        for _ in range(_DUMP_RETRIES):
            seq = self._next_seq()
            self._send(request(seq))
            messages, interrupted = self._read_dump(seq)
            if not interrupted:
                return messages
        raise KernelError(f"netlink dump interrupted by changes {_DUMP_RETRIES} times in a row")

    def _read_dump(self, seq: int) -> tuple[list[EntryMessage], bool]:
        messages: list[EntryMessage] = []
        interrupted = False
        while True:
            n = self._recv()
            try:
                for hdr, payload in codec.iter_messages(memoryview(self._buf)[:n]):
                    if hdr.seq != seq:
                        continue
                    if hdr.flags & codec.NLM_F_DUMP_INTR:
                        interrupted = True
                    msg = codec.decode_message(hdr, payload)
                    if isinstance(msg, DoneMessage):
                        if msg.error:
                            raise KernelError(f"netlink dump failed: {os.strerror(msg.error)}")
                        return messages, interrupted
                    if isinstance(msg, ErrorMessage):
                        raise KernelError(f"netlink dump request refused: {msg.describe()}")
                    if msg is not None:
                        messages.append(msg)
            except DecodeError as exc:
                raise KernelError(f"undecodable netlink reply: {exc}") from exc


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
        self._sock = _open_socket(rcvbuf, 1 << 16)
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
        self._buf = bytearray(_RECV_SIZE)

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
                for msg in codec.decode(memoryview(self._buf)[:n]):
                    event = self._event(msg)
                    if event is not None:
                        events.append(event)
            except DecodeError as exc:
                events.append(ResyncNeeded(f"undecodable notification: {exc}"))

    def _event(self, msg: codec.Decoded) -> KernelEvent | None:
        if isinstance(msg, RouteMessage):
            if msg.table != codec.RT_TABLE_MAIN:
                return None
            if msg.oif != self.ifindex and not msg.replaced:
                return None
        elif isinstance(msg, NeighMessage | FdbMessage):
            if msg.ifindex != self.ifindex:
                return None
        else:
            return None
        return KernelEvent(msg, msg.owned_on(self.ifindex))
