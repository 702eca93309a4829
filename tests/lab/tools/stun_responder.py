"""``stun_responder HOST PORT [DROP]``: a minimal STUN Binding server for the tests.

Answers every Binding request with a success response carrying the source address it
saw (XOR-MAPPED-ADDRESS), ignoring the first ``DROP`` requests (to exercise the client's
retransmissions). Prints ``ready PORT`` once bound. The response encoder is written here
independently of ``overlayd.values.stun`` on purpose: the tests check our decoder against
it and against RFC 5769, not against itself.
"""

from __future__ import annotations

import asyncio
import struct
import sys
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
    """Answers Binding requests (after dropping the first ``drop``); counts what it saw."""

    def __init__(self, drop: int = 0) -> None:
        self.drop = drop
        self.requests = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if len(data) < 20 or data[:2] != b"\x00\x01" or self.transport is None:
            return
        self.requests += 1
        if self.requests <= self.drop:
            return
        reply = binding_response(data[8:20], IPv4Address(addr[0]), addr[1])
        self.transport.sendto(reply, addr)


async def serve(host: str, port: int, drop: int) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: Responder(drop), local_addr=(host, port)
    )
    print(f"ready {transport.get_extra_info('sockname')[1]}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if sys.argv[3:] else 0))
