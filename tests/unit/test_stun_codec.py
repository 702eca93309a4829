"""STUN Binding codec (overlayd.values.stun): RFC 5769 vectors, fallbacks and rejections."""

from __future__ import annotations

import contextlib
import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlayd.values.stun import (
    MAX_MESSAGE_LEN,
    StunError,
    StunMapping,
    StunReject,
    decode_binding_response,
    encode_binding_request,
    looks_like_stun,
)
from tests.component.stun_responder import (
    address_value,
    attribute,
    binding_response,
    message,
)

# RFC 5769 section 2.2, "Sample IPv4 Response": 192.0.2.1 port 32853, with SOFTWARE,
# MESSAGE-INTEGRITY and FINGERPRINT.
RFC5769_TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
RFC5769_RESPONSE = bytes.fromhex(
    "0101003c 2112a442 b7e7a701 bc34d686 fa87dfae"  # header
    " 8022000b 74657374 20766563 746f7220"  # SOFTWARE "test vector"
    " 00200008 0001a147 e112a643"  # XOR-MAPPED-ADDRESS
    " 00080014 2b91f599 fd9e90c3 8c7489f9 2af9ba53 f06be7d7"  # MESSAGE-INTEGRITY
    " 80280004 c07d4c96"  # FINGERPRINT
)
TID = bytes(range(12))
SEEN = StunMapping(IPv4Address("203.0.113.9"), 40123)


def reason(data: bytes, expected: tuple[bytes, ...] = (TID,)) -> StunReject:
    with pytest.raises(StunError) as caught:
        decode_binding_response(data, expected)
    return caught.value.reason


def test_request_is_a_bare_binding_request() -> None:
    data = encode_binding_request(TID)
    assert data == bytes.fromhex("000100002112a442") + TID
    assert looks_like_stun(data)
    with pytest.raises(ValueError):
        encode_binding_request(b"short")


def test_rfc5769_ipv4_response() -> None:
    response = decode_binding_response(RFC5769_RESPONSE, {RFC5769_TID})
    assert response.transaction_id == RFC5769_TID
    assert response.mapping == StunMapping(IPv4Address("192.0.2.1"), 32853)


def test_rfc5769_fingerprint_is_checked() -> None:
    forged = bytearray(RFC5769_RESPONSE)
    forged[-1] ^= 1
    assert reason(bytes(forged), (RFC5769_TID,)) is StunReject.FINGERPRINT


def test_our_responder_round_trips() -> None:
    for fingerprint in (True, False):
        data = binding_response(TID, SEEN.address, SEEN.port, fingerprint=fingerprint)
        assert decode_binding_response(data, {TID}).mapping == SEEN


def test_mapped_address_is_the_fallback_and_xor_wins() -> None:
    plain = attribute(0x0001, address_value(SEEN.address, SEEN.port, xor=False))
    classic = message(0x0101, TID, plain, fingerprint=False)
    assert decode_binding_response(classic, {TID}).mapping == SEEN
    other = attribute(0x0001, address_value(IPv4Address("198.51.100.1"), 1, xor=False))
    xored = attribute(0x0020, address_value(SEEN.address, SEEN.port, xor=True))
    both = message(0x0101, TID, other + xored, fingerprint=True)
    assert decode_binding_response(both, {TID}).mapping == SEEN


def test_error_response_names_its_code() -> None:
    error = attribute(0x0009, struct.pack("!HBB", 0, 4, 20) + b"Unknown Attribute")
    with pytest.raises(StunError, match="420 'Unknown Attribute'") as caught:
        decode_binding_response(message(0x0111, TID, error, fingerprint=False), {TID})
    assert caught.value.reason is StunReject.ERROR_RESPONSE


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x01\x01\x00\x00", StunReject.MALFORMED),
        (b"\0" * (MAX_MESSAGE_LEN + 1), StunReject.OVERSIZE),
        (binding_response(TID, SEEN.address, SEEN.port)[:-1], StunReject.MALFORMED),
        (message(0x0101, TID, b"", fingerprint=False).replace(b"\x21\x12", b"\x21\x13", 1),
         StunReject.COOKIE),
        (message(0x0001, TID, b"", fingerprint=False), StunReject.TYPE),
        (binding_response(bytes(12), SEEN.address, SEEN.port), StunReject.TRANSACTION),
        (message(0x0101, TID, attribute(0x8022, b"x"), fingerprint=False), StunReject.NO_ADDRESS),
        (message(0x0101, TID, attribute(0x0030, b"x"), fingerprint=False),
         StunReject.UNKNOWN_ATTRIBUTE),
        (message(0x0101, TID, attribute(0x0020, b"\0\x02" + bytes(18)), fingerprint=False),
         StunReject.FAMILY),
        (message(0x0101, TID, attribute(0x0020, b"\0\x01\0"), fingerprint=False),
         StunReject.MALFORMED),
        (message(0x0101, TID, struct.pack("!HH", 0x0020, 200), fingerprint=False),
         StunReject.MALFORMED),
    ],
    ids=["short", "oversize", "truncated", "cookie", "request", "other-transaction",
         "no-address", "unknown-required", "ipv6", "short-address", "overrun"],
)  # fmt: skip
def test_rejections(data: bytes, why: StunReject) -> None:
    assert reason(data) is why


def test_fingerprint_must_be_last() -> None:
    signed = binding_response(TID, SEEN.address, SEEN.port, fingerprint=True)
    extra = attribute(0x8022, b"late")
    tampered = bytearray(signed + extra)
    struct.pack_into("!H", tampered, 2, len(tampered) - 20)
    assert reason(bytes(tampered)) in (StunReject.FINGERPRINT, StunReject.MALFORMED)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.binary(min_size=12, max_size=12))
def test_garbage_raises_only_our_error(body: bytes, tid: bytes) -> None:
    # Both raw bytes and bytes behind a plausible header (so the attribute parser is reached).
    header = struct.pack("!HHI", 0x0101, len(body) // 4 * 4, 0x2112A442) + tid
    for data in (body, header + body[: len(body) // 4 * 4]):
        with contextlib.suppress(StunError):
            decode_binding_response(data, {tid})
