"""STUN Binding messages (RFC 5389): the request we send and the response we read.

Pure: no sockets, no clock, no randomness -- the caller draws the 12-byte transaction id
and hands it in. ``decode_binding_response`` raises ``StunError`` (with a ``StunReject``
reason the caller may count) for anything that must not be acted upon: it is fed whatever
arrives on a UDP port open to the internet.

Layout (network byte order)::

    0  2  type: 0x0001 Binding request, 0x0101 success response, 0x0111 error response
    2  2  length of the attributes (a multiple of 4; the 20-byte header not counted)
    4  4  magic cookie 0x2112A442
    8 12  transaction id
   20  .  attributes: type (2), length (2), value, padded to a multiple of 4

What we read: XOR-MAPPED-ADDRESS (0x0020; port XOR the cookie's top 16 bits, address XOR
the cookie), else the classic MAPPED-ADDRESS (0x0001) that RFC 3489 servers send;
FINGERPRINT (0x8028) is checked when present; ERROR-CODE (0x0009) of an error response is
reported. MESSAGE-INTEGRITY is not checked (a Binding request to a public server carries
no credentials), which is why what a server tells us is a candidate, verified by a peer
before anyone relies on it. IPv4 only, like the rest of the underlay.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Container
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address

from overlayd.values.errors import OverlaydError
from overlayd.values.text import quote

MAGIC_COOKIE = 0x2112A442
TRANSACTION_ID_LEN = 12
HEADER_LEN = 20
MAX_MESSAGE_LEN = 1280
"""Longest response we parse: a Binding response is under 200 bytes; anything far larger
is not one (RFC 5389 keeps STUN over UDP under the path MTU)."""

BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
BINDING_ERROR = 0x0111

ATTR_MAPPED_ADDRESS = 0x0001
ATTR_ERROR_CODE = 0x0009
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_FINGERPRINT = 0x8028
FINGERPRINT_XOR = 0x5354554E
_FAMILY_IPV4 = 0x01

# Comprehension-required attributes (type below 0x8000) we may see in a Binding response:
# RFC 5389's own, and RFC 3489's SOURCE-/CHANGED-ADDRESS that older servers add. A response
# with any other one must be discarded (RFC 5389 section 7.3.3).
_KNOWN_REQUIRED = frozenset({0x0001, 0x0004, 0x0005, 0x0006, 0x0008, 0x0009, 0x000A, 0x0014,
                             0x0015, 0x0020})  # fmt: skip

_HEADER = struct.Struct("!HHI12s")
_ATTR_HEADER = struct.Struct("!HH")
_ADDRESS = struct.Struct("!xBH4s")


class StunReject(StrEnum):
    """Why a datagram was not taken as a Binding response; the values are counter names."""

    MALFORMED = "malformed"  # too short, bad lengths, attribute overrunning the message
    OVERSIZE = "oversize"
    COOKIE = "cookie"
    TYPE = "type"  # not a Binding success or error response
    TRANSACTION = "transaction"  # answers no request of ours
    FINGERPRINT = "fingerprint"
    UNKNOWN_ATTRIBUTE = "unknown-attribute"
    ERROR_RESPONSE = "error-response"
    NO_ADDRESS = "no-address"
    FAMILY = "family"  # an IPv6 (or unknown family) mapped address


class StunError(OverlaydError):
    """A datagram that is not a usable Binding response; ``reason`` says why."""

    retryable = True

    def __init__(self, reason: StunReject, detail: str = "") -> None:
        super().__init__(f"STUN response rejected: {reason}" + (f" ({detail})" if detail else ""))
        self.reason = reason


@dataclass(frozen=True, order=True)
class StunMapping:
    """The address and port a STUN server saw our request come from."""

    address: IPv4Address
    port: int


@dataclass(frozen=True)
class BindingResponse:
    """A decoded Binding success response: which request it answers and what it says."""

    transaction_id: bytes
    mapping: StunMapping


def encode_binding_request(transaction_id: bytes) -> bytes:
    """A Binding request without attributes (20 bytes) carrying ``transaction_id``."""
    if len(transaction_id) != TRANSACTION_ID_LEN:
        raise ValueError(f"a transaction id is {TRANSACTION_ID_LEN} bytes")
    return _HEADER.pack(BINDING_REQUEST, 0, MAGIC_COOKIE, transaction_id)


def looks_like_stun(data: bytes) -> bool:
    """Whether ``data`` may be a STUN message: the cheap test that separates STUN from the
    other protocols sharing a socket (top two bits zero, the magic cookie at offset 4)."""
    return len(data) >= HEADER_LEN and data[0] < 0x40 and data[4:8] == b"\x21\x12\xa4\x42"


def decode_binding_response(data: bytes, expected: Container[bytes]) -> BindingResponse:
    """The Binding success response in ``data``, which must answer one of ``expected``
    (transaction ids); raises ``StunError`` for anything else."""
    if len(data) > MAX_MESSAGE_LEN:
        raise StunError(StunReject.OVERSIZE, f"{len(data)} bytes")
    if len(data) < HEADER_LEN:
        raise StunError(StunReject.MALFORMED, f"{len(data)} bytes")
    kind, length, cookie, transaction_id = _HEADER.unpack_from(data)
    if cookie != MAGIC_COOKIE:
        raise StunError(StunReject.COOKIE)
    if length != len(data) - HEADER_LEN or length % 4:
        raise StunError(StunReject.MALFORMED, f"length field {length}, {len(data)} bytes")
    if kind not in (BINDING_SUCCESS, BINDING_ERROR):
        raise StunError(StunReject.TYPE, f"0x{kind:04x}")
    if transaction_id not in expected:
        raise StunError(StunReject.TRANSACTION)
    attributes = _attributes(data)
    if kind == BINDING_ERROR:
        raise StunError(StunReject.ERROR_RESPONSE, _error_code(attributes.get(ATTR_ERROR_CODE)))
    for xor, attr in ((True, ATTR_XOR_MAPPED_ADDRESS), (False, ATTR_MAPPED_ADDRESS)):
        if attr in attributes:
            return BindingResponse(transaction_id, _address(attributes[attr], xor))
    raise StunError(StunReject.NO_ADDRESS)


def _attributes(data: bytes) -> dict[int, bytes]:
    """The attributes of a message whose header was checked: the first of each type (RFC
    5389 section 15: later duplicates are ignored); checks FINGERPRINT and unknown ones."""
    found: dict[int, bytes] = {}
    offset = HEADER_LEN
    while offset < len(data):
        if offset + _ATTR_HEADER.size > len(data):
            raise StunError(StunReject.MALFORMED, "truncated attribute header")
        attr, length = _ATTR_HEADER.unpack_from(data, offset)
        start = offset + _ATTR_HEADER.size
        if start + length > len(data):
            raise StunError(StunReject.MALFORMED, f"attribute 0x{attr:04x} overruns")
        if attr == ATTR_FINGERPRINT:
            _check_fingerprint(data, offset, data[start : start + length])
            if start + length != len(data):
                raise StunError(StunReject.MALFORMED, "FINGERPRINT is not last")
        elif attr < 0x8000 and attr not in _KNOWN_REQUIRED:
            raise StunError(StunReject.UNKNOWN_ATTRIBUTE, f"0x{attr:04x}")
        found.setdefault(attr, data[start : start + length])
        offset = start + (length + 3) // 4 * 4
    return found


def _check_fingerprint(data: bytes, offset: int, value: bytes) -> None:
    # CRC-32 of the message up to the attribute, with the length field as sent (which
    # already counts the FINGERPRINT), XORed with "STUN".
    if len(value) != 4:
        raise StunError(StunReject.MALFORMED, "FINGERPRINT length")
    if int.from_bytes(value) != zlib.crc32(data[:offset]) ^ FINGERPRINT_XOR:
        raise StunError(StunReject.FINGERPRINT)


def _address(value: bytes, xor: bool) -> StunMapping:
    if len(value) < 4:
        raise StunError(StunReject.MALFORMED, "address attribute too short")
    if value[1] != _FAMILY_IPV4:
        raise StunError(StunReject.FAMILY, f"family {value[1]}")
    if len(value) != _ADDRESS.size:
        raise StunError(StunReject.MALFORMED, "IPv4 address attribute length")
    _, port, packed = _ADDRESS.unpack(value)
    if xor:
        port ^= MAGIC_COOKIE >> 16
        packed = (int.from_bytes(packed) ^ MAGIC_COOKIE).to_bytes(4)
    return StunMapping(IPv4Address(packed), port)


def _error_code(value: bytes | None) -> str:
    """``"class*100+number reason"`` of an ERROR-CODE attribute (RFC 5389 section 15.6)."""
    if value is None or len(value) < 4:
        return "no ERROR-CODE"
    code = (value[2] & 0x07) * 100 + value[3]
    return f"{code} {quote(value[4:].decode('utf-8', 'replace'))}"
