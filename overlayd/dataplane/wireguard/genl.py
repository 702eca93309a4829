"""Generic netlink for the kernel WireGuard driver: attribute encoding and decoding, the
family-id lookup, and ``GenericNetlink``, a blocking request/response channel to one family.

The netlink framing (header struct, flags, attribute header, ACK/error/DONE replies) is
``netlink.nlmsg``'s, shared with rtnetlink; only what generic netlink adds lives here.
Plain sockets rather than pyroute2's ``WireGuard``: see ``kernel``'s docstring for the
measured reason. Must not import pyroute2 or anything above the data plane.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
from collections.abc import Iterable, Iterator
from typing import Final

from overlayd.dataplane.netlink import nlmsg

NETLINK_GENERIC: Final = 16  # missing from typeshed
NLA_F_NESTED: Final = 0x8000
_NLA_TYPE_MASK: Final = 0x3FFF

# linux/genetlink.h: the controller family that resolves family names to ids
GENL_ID_CTRL: Final = 0x10
CTRL_CMD_GETFAMILY: Final = 3
CTRL_ATTR_FAMILY_ID: Final = 1
CTRL_ATTR_FAMILY_NAME: Final = 2

GENL_HDR: Final = struct.Struct("=BBH")  # cmd, version, reserved
_RECV_SIZE: Final = 1 << 20


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute (header, payload, padding to 4 bytes)."""
    length = nlmsg.RTATTR.size + len(payload)
    return nlmsg.RTATTR.pack(length, kind) + payload + bytes(nlmsg.align4(length) - length)


def attr_u8(kind: int, value: int) -> bytes:
    """A u8 attribute."""
    return attr(kind, struct.pack("=B", value))


def attr_u16(kind: int, value: int) -> bytes:
    """A u16 attribute (host byte order)."""
    return attr(kind, struct.pack("=H", value))


def attr_u32(kind: int, value: int) -> bytes:
    """A u32 attribute (host byte order)."""
    return attr(kind, struct.pack("=I", value))


def attr_str(kind: int, value: str) -> bytes:
    """A NUL-terminated string attribute."""
    return attr(kind, value.encode() + b"\0")


def nested(kind: int, *children: bytes) -> bytes:
    """A nested attribute; NLA_F_NESTED set as the kernel's strict validation wants."""
    return attr(kind | NLA_F_NESTED, b"".join(children))


def iter_attrs(data: memoryview) -> Iterator[tuple[int, memoryview]]:
    """(type, payload) of each attribute in order, flag bits masked off.

    For nested arrays (peers, allowed IPs), whose entries all carry the same type;
    ``attr_map`` is the keyed view of a plain attribute list.
    """
    offset = 0
    while offset + nlmsg.RTATTR.size <= len(data):
        length, kind = nlmsg.RTATTR.unpack_from(data, offset)
        if length < nlmsg.RTATTR.size or offset + length > len(data):
            raise nlmsg.DecodeError("truncated netlink attribute")
        yield kind & _NLA_TYPE_MASK, data[offset + nlmsg.RTATTR.size : offset + length]
        offset += nlmsg.align4(length)


def attr_map(data: memoryview, start: int = 0) -> dict[int, memoryview]:
    """Attributes of ``data[start:]`` by type; the last one wins, as in the kernel."""
    return nlmsg.parse_attrs(data, start)


def u16(data: memoryview) -> int:
    """A u16 attribute's value."""
    value: int = struct.unpack_from("=H", data)[0]
    return value


def u32(data: memoryview) -> int:
    """A u32 attribute's value."""
    value: int = struct.unpack_from("=I", data)[0]
    return value


def u64(data: memoryview) -> int:
    """A u64 attribute's value."""
    value: int = struct.unpack_from("=Q", data)[0]
    return value


def encode_get_family(name: str) -> bytes:
    """CTRL_CMD_GETFAMILY payload resolving a generic netlink family's id."""
    return GENL_HDR.pack(CTRL_CMD_GETFAMILY, 1, 0) + attr_str(CTRL_ATTR_FAMILY_NAME, name)


class _Socket:
    """A blocking NETLINK_GENERIC socket in the caller's namespace, one request at a time."""

    def __init__(self, timeout: float) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self._sock.settimeout(timeout)
        self._sock.bind((0, 0))
        self._seq = itertools.count(1)

    def close(self) -> None:
        self._sock.close()

    def request(self, msg_type: int, flags: int, payload: bytes) -> list[memoryview]:
        """Send one request; return the payload of each reply message.

        ``OSError`` with the kernel's errno when it answers with an error. With NLM_F_ACK
        and no data the result is empty; with NLM_F_DUMP it is every message up to DONE.
        """
        seq = next(self._seq)
        header = nlmsg.NLMSG_HDR.pack(nlmsg.NLMSG_HDR.size + len(payload), msg_type, flags, seq, 0)
        self._sock.send(header + payload)
        replies: list[memoryview] = []
        while True:
            for hdr, body in nlmsg.iter_messages(self._sock.recv(_RECV_SIZE)):
                if hdr.seq != seq:
                    continue  # a late answer to an earlier, timed-out request
                # family ids are dynamic and may equal an RTM_* type: only ERROR and DONE
                # go to the shared decoders
                end: nlmsg.ErrorMessage | nlmsg.DoneMessage | None = None
                if hdr.type == nlmsg.NLMSG_ERROR:
                    end = nlmsg.decode_error(hdr.seq, body, hdr.flags)
                elif hdr.type == nlmsg.NLMSG_DONE:
                    end = nlmsg.decode_done(hdr.seq, body)
                if end is not None:
                    if end.error:
                        raise OSError(end.error, os.strerror(end.error))
                    return replies
                replies.append(body)
                if not hdr.flags & nlmsg.NLM_F_MULTI and not flags & nlmsg.NLM_F_ACK:
                    return replies


class GenericNetlink:
    """Requests to the generic netlink family ``name``, a fresh socket per call.

    Raises ``OSError`` (the kernel's errno; ``ENOENT`` when the family is not registered);
    the driver translates it. The family id is looked up once and kept.
    """

    def __init__(self, name: str, *, timeout: float = 5.0) -> None:
        self.name = name
        self._timeout = timeout
        self._family: int | None = None

    def _family_id(self, sock: _Socket) -> int:
        if self._family is None:
            request = nlmsg.NLM_F_REQUEST
            for body in sock.request(GENL_ID_CTRL, request, encode_get_family(self.name)):
                family = attr_map(body, GENL_HDR.size).get(CTRL_ATTR_FAMILY_ID)
                if family is not None:
                    self._family = u16(family)
            if self._family is None:
                raise OSError(0, f"generic netlink family {self.name!r} not found")
        return self._family

    def dump(self, payload: bytes) -> list[memoryview]:
        """The genl payloads (generic header + attributes) of a dump request's replies."""
        sock = _Socket(self._timeout)
        try:
            flags = nlmsg.NLM_F_REQUEST | nlmsg.NLM_F_DUMP
            return sock.request(self._family_id(sock), flags, payload)
        finally:
            sock.close()

    def send(self, payloads: Iterable[bytes]) -> None:
        """Send each genl payload as an acknowledged request, in order; stop at an error."""
        sock = _Socket(self._timeout)
        try:
            family = self._family_id(sock)
            for payload in payloads:
                sock.request(family, nlmsg.NLM_F_REQUEST | nlmsg.NLM_F_ACK, payload)
        finally:
            sock.close()
