"""Low-TTL opening datagrams for hole punching, from any of our UDP ports.

A raw IPv4 socket (``IPPROTO_UDP``) sends an empty UDP datagram from a given source port
(our probe port, or the WireGuard port wireguard-go holds) with a small IP TTL: it
leaves through our own NAT, which then has the mapping the other side's datagrams will
match, and expires before it reaches the other side's NAT, where an early datagram would
be delivered to the router itself and spoil the mapping there (docs/nat.md). The kernel
tracks it as the same UDP flow as the real socket's, so the mapping is the socket's.

The socket never reads: a filter that accepts nothing keeps the kernel from queueing
every UDP datagram of the host onto it. Needs CAP_NET_RAW; without it, ``open_raw``
says why and punching goes on without openers (it then works only through NATs that let
the first datagram in).
"""

from __future__ import annotations

import ctypes
import socket
import struct

from overlayd.values.wireguard import Endpoint

_SO_ATTACH_FILTER = 26
_BPF_RET_K = 0x06  # BPF_RET | BPF_K: "return k bytes", here 0: accept nothing


class Opener:
    """Sends low-TTL empty UDP datagrams from chosen source ports."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.sent = 0
        self.errors = 0

    def send(self, source_port: int, to: Endpoint) -> None:
        """One empty datagram from ``source_port`` to ``to`` (checksum 0: none, as IPv4
        allows; the kernel writes the IP header and picks the source address)."""
        header = struct.pack("!HHHH", source_port, to.port, 8, 0)
        try:
            self._sock.sendto(header, (str(to.address), 0))
            self.sent += 1
        except OSError:
            self.errors += 1

    def close(self) -> None:
        self._sock.close()


def open_raw(ttl: int) -> Opener | str:
    """An ``Opener`` whose datagrams carry IP TTL ``ttl``, or why there is none."""
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    except OSError as exc:
        return f"no raw socket for hole-punching openers: {exc.strerror}"
    try:
        code = ctypes.create_string_buffer(struct.pack("HBBI", _BPF_RET_K, 0, 0, 0))
        program = struct.pack("HL", 1, ctypes.addressof(code))
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, program)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        return f"cannot set up the hole-punching socket: {exc.strerror}"
    return Opener(sock)
