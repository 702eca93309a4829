"""The bulk data-plane path: program and read back overlayd's routes, neighbours and FDB
entries on its overlay device over a raw rtnetlink socket.

``Rtnl.apply`` packs many requests into each ``send`` (the kernel runs every message in
the buffer before the call returns) with NLM_F_ACK on each, then reads one ACK per
request and maps failures back to their entry by sequence number. ``Rtnl.dump`` reads
back only what overlayd owns. Kernel notifications are ``monitor``'s.

The socket lives in the network namespace of the calling process. ``Rtnl`` is not
thread-safe.
"""

from __future__ import annotations

import errno
import itertools
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import Any, Final

from overlayd.dataplane.netlink import rtnl_encode
from overlayd.dataplane.netlink.nlmsg import ErrorMessage, Header, decode_ack
from overlayd.dataplane.netlink.nlsock import (
    NETLINK_CAP_ACK,
    NETLINK_EXT_ACK,
    NETLINK_GET_STRICT_CHK,
    Channel,
    open_socket,
    setopt,
)
from overlayd.dataplane.netlink.rtnl_decode import decode, decode_message
from overlayd.dataplane.netlink.rtnl_messages import (
    AF_BRIDGE,
    AF_INET,
    EntryMessage,
    FdbMessage,
    NeighMessage,
    RouteMessage,
)
from overlayd.values.errors import KernelError
from overlayd.values.kernel_state import (
    Changes,
    FdbEntry,
    KernelState,
    MacAddress,
    NeighEntry,
    RouteEntry,
)

# Each queued ACK costs its skb's truesize (832 bytes measured on 6.x, with headroom for error
# ACKs carrying an extended-ACK text) against the receive buffer. If the ACKs of one
# send do not fit, the kernel drops them and we cannot tell what was applied, so a send
# carries at most rcvbuf / this many requests.
_ACK_BUDGET: Final = 2048
_MAX_BATCH: Final = 8192

# errno values the batch path treats as success: EEXIST can only come from a create
# racing another writer, ENOENT from deleting what is already gone.
_BENIGN_SET_ERRORS: Final = frozenset({errno.EEXIST})
_BENIGN_DEL_ERRORS: Final = frozenset({errno.ENOENT, errno.ESRCH})


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
        sock = open_socket(rcvbuf, sndbuf)
        # Error ACKs then carry only the request header, not the request, and a text.
        setopt(sock, NETLINK_CAP_ACK)
        setopt(sock, NETLINK_EXT_ACK)
        # Lets dump requests carry filters (kernel >= 4.20); we filter in code anyway.
        self._strict = setopt(sock, NETLINK_GET_STRICT_CHK)
        effective = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.batch_size = max(16, min(_MAX_BATCH, effective // _ACK_BUDGET))
        self._ch = Channel(sock, timeout)

    def close(self) -> None:
        self._ch.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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
            self._ch.send(b"".join(data for _, _, _, data in chunk))
            for ack in self._acks(pending):
                op, entry = pending.pop(ack.seq)
                benign = _BENIGN_SET_ERRORS if op is Op.SET else _BENIGN_DEL_ERRORS
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
            (Op.SET, changes.set_neighs, rtnl_encode.encode_neigh_set),
            (Op.SET, changes.set_fdbs, rtnl_encode.encode_fdb_set),
            (Op.SET, changes.set_routes, rtnl_encode.encode_route_set),
            (Op.DEL, changes.del_routes, rtnl_encode.encode_route_del),
            (Op.DEL, changes.del_neighs, rtnl_encode.encode_neigh_del),
            (Op.DEL, changes.del_fdbs, rtnl_encode.encode_fdb_del),
        )
        for op, entries, encode in groups:
            for entry in entries:
                seq = self._ch.next_seq()
                yield seq, op, entry, encode(seq, ifindex, entry)

    def _acks(self, pending: dict[int, tuple[Op, Entry]]) -> Iterator[ErrorMessage]:
        """ACKs for the sequence numbers in ``pending`` until none is left.

        The caller pops each answered one. Replies to older requests (from a batch
        abandoned after an error) are skipped.
        """
        while pending:
            n = self._ch.recv()
            buf = self._ch.buf
            fast = decode_ack(buf, n)
            if fast is not None:
                if fast.seq in pending:
                    yield fast
                continue
            for msg in decode(memoryview(buf)[:n]):
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
            lambda seq: rtnl_encode.encode_route_dump(seq, ifindex, filtered=self._strict),
            lambda seq: rtnl_encode.encode_neigh_dump(seq, AF_INET, ifindex, filtered=self._strict),
            lambda seq: rtnl_encode.encode_neigh_dump(
                seq, AF_BRIDGE, ifindex, filtered=self._strict
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

    def fdb_idle(self, ifindex: int) -> dict[MacAddress, float]:
        """Per FDB entry of ours on ``ifindex`` (by MAC), seconds since the kernel last
        forwarded a frame through it: what we send to each VXLAN peer, at the cost of one
        dump (overlayd/planning/probe_pace.py)."""
        found = self._dump(
            lambda seq: rtnl_encode.encode_neigh_dump(
                seq, AF_BRIDGE, ifindex, filtered=self._strict
            )
        )
        return {
            msg.mac: msg.used
            for msg in found
            if isinstance(msg, FdbMessage) and msg.owned_on(ifindex) and msg.used is not None
        }

    def _dump(self, request: Callable[[int], bytes]) -> list[EntryMessage]:
        return self._ch.dump(request, _entry_message)


def _entry_message(hdr: Header, payload: memoryview) -> EntryMessage | None:
    msg = decode_message(hdr, payload)
    return msg if isinstance(msg, RouteMessage | NeighMessage | FdbMessage) else None
