"""A minimal STUN Binding server for the tests without root (the root test uses coturn).

``Responder`` answers every Binding request with a success response carrying the source
address it saw (XOR-MAPPED-ADDRESS; or the address ``claim``ed, with the port seen),
ignoring the first ``drop`` requests (to exercise the client's retransmissions). The
response encoder is written here independently of ``overlayd.values.stun`` on purpose: the
tests check our decoder against it and against RFC 5769, not against itself.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from ipaddress import IPv4Address
from typing import Any, cast

COOKIE = 0x2112A442


def attribute(kind: int, value: bytes) -> bytes:
    """One STUN attribute, padded to a multiple of 4 bytes."""
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)


def address_value(address: IPv4Address, port: int, *, xor: bool) -> bytes:
    """The value of a (XOR-)MAPPED-ADDRESS attribute for an IPv4 address."""
    if xor:
        port ^= COOKIE >> 16
        address = IPv4Address(int(address) ^ COOKIE)
    return struct.pack("!BBH", 0, 1, port) + address.packed


def message(kind: int, transaction_id: bytes, attributes: bytes, *, fingerprint: bool) -> bytes:
    """A STUN message; with ``fingerprint``, a FINGERPRINT attribute ends it."""
    length = len(attributes) + (8 if fingerprint else 0)
    data = struct.pack("!HHI", kind, length, COOKIE) + transaction_id + attributes
    if fingerprint:
        data += attribute(0x8028, struct.pack("!I", zlib.crc32(data) ^ 0x5354554E))
    return data


def binding_response(
    transaction_id: bytes, address: IPv4Address, port: int, *, fingerprint: bool = True
) -> bytes:
    """A Binding success response with SOFTWARE and XOR-MAPPED-ADDRESS."""
    attrs = attribute(0x8022, b"overlayd-test") + attribute(
        0x0020, address_value(address, port, xor=True)
    )
    return message(0x0101, transaction_id, attrs, fingerprint=fingerprint)


class Responder(asyncio.DatagramProtocol):
    """Answers Binding requests (after dropping the first ``drop``); records their
    transaction ids."""

    def __init__(self, drop: int = 0, claim: IPv4Address | None = None) -> None:
        self.drop = drop
        self.claim = claim
        self.transactions: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if len(data) < 20 or data[:2] != b"\x00\x01" or self.transport is None:
            return
        self.transactions.append(data[8:20])
        if len(self.transactions) <= self.drop:
            return
        seen = self.claim or IPv4Address(addr[0])
        reply = binding_response(data[8:20], seen, addr[1])
        self.transport.sendto(reply, addr)
