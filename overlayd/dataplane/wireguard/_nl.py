"""Minimal netlink plumbing for the WireGuard drivers: attribute encoding/decoding and a
blocking request/response socket.

Plain sockets rather than pyroute2's ``IPRoute``/``WireGuard`` because pyroute2 0.9 runs
its own asyncio loop inside each call, which fails when called from the daemon's running
event loop, and because the message building stays pure and unit-testable this way.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
from collections.abc import Iterator
from typing import Final

NETLINK_GENERIC: Final = 16  # missing from typeshed
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLM_F_REQUEST: Final = 0x1
NLM_F_MULTI: Final = 0x2
NLM_F_ACK: Final = 0x4
NLM_F_DUMP: Final = 0x300
NLM_F_EXCL: Final = 0x200
NLM_F_CREATE: Final = 0x400
NLA_F_NESTED: Final = 0x8000
_NLA_TYPE_MASK: Final = 0x3FFF
_NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NLA_HDR = struct.Struct("=HH")  # len, type


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute (header, payload, padding to 4 bytes)."""
    return _pad(_NLA_HDR.pack(_NLA_HDR.size + len(payload), kind) + payload)


def attr_u8(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=B", value))


def attr_u16(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=H", value))


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def attr_str(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def nested(kind: int, *children: bytes) -> bytes:
    """A nested attribute; NLA_F_NESTED set as the kernel's strict validation wants."""
    return attr(kind | NLA_F_NESTED, b"".join(children))


def iter_attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each attribute in ``data``; type without the flag bits."""
    offset = 0
    while offset + _NLA_HDR.size <= len(data):
        length, kind = _NLA_HDR.unpack_from(data, offset)
        if length < _NLA_HDR.size or offset + length > len(data):
            raise ValueError("truncated netlink attribute")
        yield kind & _NLA_TYPE_MASK, data[offset + _NLA_HDR.size : offset + length]
        offset += (length + 3) & ~3


def attr_map(data: bytes) -> dict[int, bytes]:
    """Attributes by type; the last one wins, as in the kernel's nla_parse."""
    return dict(iter_attrs(data))


def u16(data: bytes) -> int:
    value: int = struct.unpack_from("=H", data)[0]
    return value


def u32(data: bytes) -> int:
    value: int = struct.unpack_from("=I", data)[0]
    return value


def u64(data: bytes) -> int:
    value: int = struct.unpack_from("=Q", data)[0]
    return value


class NetlinkSocket:
    """A blocking netlink socket in the caller's network namespace, one request at a time."""

    def __init__(self, protocol: int, timeout: float = 5.0) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        self._sock.settimeout(timeout)
        self._sock.bind((0, 0))
        self._seq = itertools.count(1)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> NetlinkSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, msg_type: int, flags: int, payload: bytes) -> list[tuple[int, bytes]]:
        """Send one request; return (type, payload) of each reply message.

        ``OSError`` with the kernel's errno when it answers with an error. With NLM_F_ACK
        and no data the result is empty; with NLM_F_DUMP it is every message up to DONE.
        """
        seq = next(self._seq)
        header = _NLMSG_HDR.pack(_NLMSG_HDR.size + len(payload), msg_type, flags, seq, 0)
        self._sock.send(header + payload)
        replies: list[tuple[int, bytes]] = []
        while True:
            data = self._sock.recv(1 << 20)
            offset = 0
            while offset + _NLMSG_HDR.size <= len(data):
                length, kind, mflags, mseq, _ = _NLMSG_HDR.unpack_from(data, offset)
                if length < _NLMSG_HDR.size:
                    raise OSError(0, "malformed netlink message")
                body = data[offset + _NLMSG_HDR.size : offset + length]
                offset += (length + 3) & ~3
                if mseq != seq:
                    continue  # a late answer to an earlier, timed-out request
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", body)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return replies
                if kind == NLMSG_DONE:
                    code = -struct.unpack_from("=i", body)[0] if len(body) >= 4 else 0
                    if code:
                        raise OSError(code, os.strerror(code))
                    return replies
                replies.append((kind, body))
                if not mflags & NLM_F_MULTI and not flags & NLM_F_ACK:
                    return replies
