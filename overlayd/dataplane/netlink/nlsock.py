"""Opening overlayd's raw rtnetlink sockets, the SOL_NETLINK options they turn on, and
the request/dump channel over one of them.

Shared by ``rtnl.Rtnl`` (entries), ``link.Links`` (links and addresses) and
``monitor.Monitor`` (notifications). The option numbers are netlink(7)'s, for any netlink
family. Errors become ``KernelError``.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from typing import Final, TypeVar

from overlayd.dataplane.netlink.nlmsg import (
    NLM_F_DUMP_INTR,
    NLMSG_DONE,
    NLMSG_ERROR,
    DecodeError,
    Header,
    decode_done,
    decode_error,
    iter_messages,
)
from overlayd.values.errors import KernelError

T = TypeVar("T")

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

RECV_SIZE: Final = 64 << 10
"""Bytes of the receive buffer each reader keeps. One read returns one datagram: an ACK or
a notification (a few hundred bytes), or a part of a dump, which the kernel caps at 32 KiB
(``max_recvmsg_len`` in af_netlink.c, however large the buffer offered). A 1 MiB buffer
cost 1 MiB of RSS per reader (``bytearray`` zero-fills it) for nothing."""

_DUMP_RETRIES: Final = 5


def open_socket(rcvbuf: int, sndbuf: int) -> socket.socket:
    """A bound NETLINK_ROUTE socket with the given buffer sizes; ``KernelError`` if not."""
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


def setopt(sock: socket.socket, opt: int) -> bool:
    """Turn on a SOL_NETLINK option; False if this kernel does not know it."""
    try:
        sock.setsockopt(SOL_NETLINK, opt, 1)
    except OSError:
        return False
    return True


class Channel:
    """One rtnetlink socket used for request/reply: sequence numbers, reads, dumps.

    Shared by ``rtnl.Rtnl`` (entries) and ``link.Links`` (links, addresses). ``timeout``
    bounds each wait for the kernel; it only expires if the kernel never answers, which is
    reported as ``KernelError``. Not thread-safe.
    """

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.sock.settimeout(timeout)
        self.buf = bytearray(RECV_SIZE)
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def next_seq(self) -> int:
        """A fresh sequence number (wrapping, never 0)."""
        self._seq = (self._seq % 0xFFFFFFFF) + 1
        return self._seq

    def recv(self) -> int:
        """Read one datagram into ``buf``; returns its length."""
        try:
            return self.sock.recv_into(self.buf)
        except TimeoutError as exc:
            raise KernelError("the kernel did not answer a netlink request in time") from exc
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                raise KernelError(
                    "netlink receive buffer overflowed and replies were lost; "
                    "the kernel state must be read back (resync needed)"
                ) from exc
            raise KernelError(f"netlink receive failed: {exc.strerror}") from exc

    def send(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except OSError as exc:
            raise KernelError(f"netlink send failed: {exc.strerror}") from exc

    def dump(
        self, request: Callable[[int], bytes], decode: Callable[[Header, memoryview], T | None]
    ) -> list[T]:
        """Run one dump, ``decode`` each message (None: skipped); retried if the kernel
        says the table changed under it."""
        for _ in range(_DUMP_RETRIES):
            seq = self.next_seq()
            self.send(request(seq))
            found, interrupted = self._read_dump(seq, decode)
            if not interrupted:
                return found
        raise KernelError(f"netlink dump interrupted by changes {_DUMP_RETRIES} times in a row")

    def _read_dump(
        self, seq: int, decode: Callable[[Header, memoryview], T | None]
    ) -> tuple[list[T], bool]:
        found: list[T] = []
        interrupted = False
        while True:
            n = self.recv()
            try:
                for hdr, payload in iter_messages(memoryview(self.buf)[:n]):
                    if hdr.seq != seq:
                        continue
                    if hdr.flags & NLM_F_DUMP_INTR:
                        interrupted = True
                    if hdr.type == NLMSG_DONE:
                        done = decode_done(hdr.seq, payload)
                        if done.error:
                            raise KernelError(f"netlink dump failed: {os.strerror(done.error)}")
                        return found, interrupted
                    if hdr.type == NLMSG_ERROR:
                        refused = decode_error(hdr.seq, payload, hdr.flags)
                        raise KernelError(f"netlink dump request refused: {refused.describe()}")
                    item = decode(hdr, payload)
                    if item is not None:
                        found.append(item)
            except DecodeError as exc:
                raise KernelError(f"undecodable netlink reply: {exc}") from exc
