"""Netlink framing shared by every netlink family overlayd speaks (rtnetlink, generic netlink).

Pure functions over bytes, no sockets: the ``nlmsghdr`` struct and its flags, attribute
(TLV) parsing, and the replies every family shares -- NLMSG_ERROR (ACKs and errors, with
the kernel's extended-ACK text) and NLMSG_DONE. Family-specific messages live elsewhere
(``rtnl_messages`` for rtnetlink). Imports nothing of overlayd.

Layouts (native byte order):

* ``nlmsghdr``  len u32, type u16, flags u16, seq u32, pid u32            (16 bytes)
* ``nlattr``    len u16, type u16, payload padded to 4 bytes (rtnetlink's ``rtattr``)

See netlink(7) and the kernel header ``linux/netlink.h``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

# netlink(7): message types every family shares
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP_FILTERED = 0x20
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_CREATE = 0x400
# Flags the kernel sets on an NLMSG_ERROR reply.
NLM_F_CAPPED = 0x100
NLM_F_ACK_TLVS = 0x200

NLMSGERR_ATTR_MSG = 1

NLMSG_HDR = struct.Struct("=IHHII")
RTATTR = struct.Struct("=HH")
_ERR_CODE = struct.Struct("=i")
# Fast path for the common reply: an ACK is nlmsghdr + error code + echoed request header.
_ACK_HEAD = struct.Struct("=IHHIIi")

_HDR_LEN = NLMSG_HDR.size


def align4(n: int) -> int:
    """Round a length up to the 4-byte netlink alignment (NLMSG_ALIGN / RTA_ALIGN)."""
    return (n + 3) & ~3


@dataclass(frozen=True)
class Header:
    """The netlink header of a decoded message."""

    type: int
    flags: int
    seq: int


@dataclass(frozen=True)
class ErrorMessage:
    """An NLMSG_ERROR reply: ``error`` is 0 for an ACK, else a positive errno.

    ``seq`` is the sequence number of the request it answers; ``ext_msg`` is the
    kernel's extended-ACK text, if it sent one.
    """

    seq: int
    error: int
    ext_msg: str = ""

    def describe(self) -> str:
        """``strerror`` plus the kernel's own explanation, for error messages."""
        text = os.strerror(self.error) if self.error else "ok"
        return f"{text} ({self.ext_msg})" if self.ext_msg else text


@dataclass(frozen=True)
class DoneMessage:
    """NLMSG_DONE: the end of a dump. ``error`` is non-zero if the dump failed."""

    seq: int
    error: int


class DecodeError(ValueError):
    """A buffer from the kernel is not valid netlink."""


def iter_messages(buf: bytes | bytearray | memoryview) -> Iterator[tuple[Header, memoryview]]:
    """Split a buffer into (header, payload) pairs, honouring NLMSG_ALIGN padding."""
    view = memoryview(buf)
    offset = 0
    total = len(view)
    while offset + _HDR_LEN <= total:
        length, mtype, flags, seq, _pid = NLMSG_HDR.unpack_from(view, offset)
        if length < _HDR_LEN or offset + length > total:
            raise DecodeError(f"bad netlink message length {length} at offset {offset}")
        yield Header(mtype, flags, seq), view[offset + _HDR_LEN : offset + length]
        offset += align4(length)


def parse_attrs(payload: memoryview, start: int) -> dict[int, memoryview]:
    """Attributes from ``payload[start:]`` keyed by type (nested flag bits masked off).

    A later duplicate wins, as in the kernel's own nla_parse.
    """
    attrs: dict[int, memoryview] = {}
    offset = start
    total = len(payload)
    while offset + 4 <= total:
        alen, atype = RTATTR.unpack_from(payload, offset)
        if alen < 4 or offset + alen > total:
            raise DecodeError(f"bad attribute length {alen} at offset {offset}")
        attrs[atype & 0x3FFF] = payload[offset + 4 : offset + alen]
        offset += align4(alen)
    return attrs


def decode_error(seq: int, payload: memoryview, flags: int) -> ErrorMessage:
    """An NLMSG_ERROR payload: errno, the request's sequence number, extended-ACK text.

    ``seq`` is the reply header's sequence number, which the kernel copies from the
    request; the echoed request header inside the payload is used when present.
    """
    if len(payload) < 4:
        raise DecodeError("short nlmsgerr")
    (code,) = _ERR_CODE.unpack_from(payload)
    if len(payload) < 4 + _HDR_LEN:
        return ErrorMessage(seq, -code)
    req_len, _t, _f, req_seq, _pid = NLMSG_HDR.unpack_from(payload, 4)
    ext_msg = ""
    if flags & NLM_F_ACK_TLVS:
        # TLVs follow the echoed request: just its header if capped (or an ACK),
        # the whole request otherwise.
        echoed = _HDR_LEN if (flags & NLM_F_CAPPED or code == 0) else align4(req_len)
        raw = parse_attrs(payload, 4 + echoed).get(NLMSGERR_ATTR_MSG)
        if raw is not None:
            ext_msg = bytes(raw).rstrip(b"\0").decode("utf-8", "replace")
    return ErrorMessage(req_seq, -code, ext_msg)


def decode_done(seq: int, payload: memoryview) -> DoneMessage:
    """An NLMSG_DONE payload: since Linux 4.x it carries the dump's error code (0 if fine)."""
    code = _ERR_CODE.unpack_from(payload)[0] if len(payload) >= 4 else 0
    return DoneMessage(seq, -code)


def decode_ack(buf: bytes | bytearray | memoryview, nbytes: int) -> ErrorMessage | None:
    """Fast path: if ``buf[:nbytes]`` is exactly one successful ACK, return it.

    Applying a batch reads one ACK per message, so this skips the generic decoder for
    the common case. Anything else (errors, several messages) returns None.
    """
    if nbytes != _ACK_HEAD.size + _HDR_LEN:
        return None
    length, mtype, _flags, seq, _pid, code = _ACK_HEAD.unpack_from(buf)
    if mtype != NLMSG_ERROR or code != 0 or length != nbytes:
        return None
    return ErrorMessage(seq, 0)
