"""Probe wire format: round trips and every rejection."""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable
from functools import partial
from ipaddress import IPv4Address
from typing import Any

import pytest

from overlayd.probe.wire import (
    KDF_CONTEXT,
    MAC_LEN,
    PROBE_LEN,
    REPLY_LEN,
    Probe,
    ProbeCodec,
    ProbeError,
    Reject,
    Reply,
    peek_recipient,
)
from overlayd.values.keys import PrivateKey, PublicKey, derive_shared

NOW = 1_700_000_000.0
OBSERVED = (IPv4Address("203.0.113.7"), 8473)


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Node:
    """One identity with the bookkeeping a prober does around its codec."""

    def __init__(self, clock: Clock | None = None, **kwargs: Any) -> None:
        self.key = PrivateKey.generate()
        self.clock = clock or Clock()
        self.codec = ProbeCodec(self.key, clock=self.clock, **kwargs)
        self.peers: set[PublicKey] = set()
        self.outstanding: dict[bytes, PublicKey] = {}

    @property
    def public(self) -> PublicKey:
        return self.key.public_key()

    def knows(self, *others: Node) -> None:
        self.peers.update(o.public for o in others)

    def probe(self, peer: Node) -> bytes:
        nonce, data = self.codec.encode_probe(peer.public)
        self.outstanding[nonce] = peer.public
        return data

    def decode(self, data: bytes) -> Probe | Reply:
        def expects(key: PublicKey, nonce: bytes) -> bool:
            return self.outstanding.get(nonce) == key

        msg = self.codec.decode(data, known=self.peers.__contains__, expects_reply=expects)
        if isinstance(msg, Reply):
            del self.outstanding[msg.echo]
        return msg

    def answer(self, data: bytes) -> bytes:
        msg = self.decode(data)
        assert isinstance(msg, Probe)
        return self.codec.encode_reply(msg, OBSERVED)


@pytest.fixture
def pair() -> tuple[Node, Node]:
    a, b = Node(), Node()
    a.knows(b)
    b.knows(a)
    return a, b


def rejected(reason: Reject, call: Callable[[], object]) -> None:
    with pytest.raises(ProbeError) as info:
        call()
    assert info.value.reason is reason, info.value


def reseal(data: bytes, key: bytes) -> bytes:
    """Recompute the MAC of a modified message with ``key`` (what a key holder can do)."""
    body = data[:-MAC_LEN]
    return body + hmac.digest(key, body, "sha256")[:MAC_LEN]


def test_round_trip(pair: tuple[Node, Node]) -> None:
    a, b = pair
    data = a.probe(b)
    assert len(data) == PROBE_LEN
    assert peek_recipient(data) == b.public
    probe = b.decode(data)
    assert isinstance(probe, Probe)
    assert probe.sender == a.public
    assert probe.sent_ms == int(NOW * 1000)
    reply_data = b.codec.encode_reply(probe, OBSERVED)
    assert len(reply_data) == REPLY_LEN
    reply = a.decode(reply_data)
    assert isinstance(reply, Reply)
    assert reply.sender == b.public
    assert reply.echo == probe.nonce
    assert reply.observed == OBSERVED
    assert not a.outstanding


def test_tags_stay_hmac_sha256_for_more_peers_than_the_codec_keeps_hot() -> None:
    """The codec keeps the hashed key blocks of its recent peers only (bounded): with
    more peers than that, each round of probes evicts and rebuilds them, and every tag is
    still HMAC-SHA256 of the body, truncated, checked by the peer."""
    a = Node()
    peers = [Node() for _ in range(1100)]  # more than the codec keeps (1,024)
    a.knows(*peers)
    for _ in range(2):
        for peer in peers:
            peer.knows(a)
            data = a.probe(peer)
            key = derive_shared(a.key, peer.public, KDF_CONTEXT)
            assert data[-MAC_LEN:] == hmac.digest(key, data[:-MAC_LEN], "sha256")[:MAC_LEN]
            reply = peer.answer(data)
            assert isinstance(a.decode(reply), Reply)
    assert a.codec.cached_peers()[0] == {p.public for p in peers}


def test_layout_is_as_documented(pair: tuple[Node, Node]) -> None:
    a, b = pair
    data = a.probe(b)
    magic, version, kind, reserved = struct.unpack_from("!4sBBH", data)
    assert (magic, version, kind, reserved) == (b"OVPR", 1, 1, 0)
    assert data[8:40] == a.public.raw and data[40:72] == b.public.raw
    assert struct.unpack_from("!Q", data, 88)[0] == int(NOW * 1000)
    key = derive_shared(a.key, b.public, KDF_CONTEXT)
    assert data[-MAC_LEN:] == hmac.digest(key, data[:-MAC_LEN], "sha256")[:MAC_LEN]
    reply = b.answer(data)
    assert reply[96:112] == data[72:88]  # echoed nonce
    assert reply[112:116] == OBSERVED[0].packed
    assert struct.unpack_from("!HH", reply, 116) == (OBSERVED[1], 0)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d[:50], Reject.MALFORMED),
        (lambda d: d + b"\0", Reject.MALFORMED),
        (lambda d: b"XXXX" + d[4:], Reject.MAGIC),
        (lambda d: d[:4] + b"\x02" + d[5:], Reject.VERSION),
        (lambda d: d[:5] + b"\x09" + d[6:], Reject.TYPE),
        (lambda d: d[:5] + b"\x02" + d[6:], Reject.MALFORMED),  # a PROBE's length as REPLY
        (lambda d: d[:6] + b"\x00\x01" + d[8:], Reject.MALFORMED),  # reserved bits
        (lambda d: d[:-1] + bytes([d[-1] ^ 1]), Reject.MAC),
        (lambda d: d[:80] + bytes([d[80] ^ 1]) + d[81:], Reject.MAC),  # nonce flipped
    ],
)
def test_damaged_probe_rejected(
    pair: tuple[Node, Node], mutate: Callable[[bytes], bytes], reason: Reject
) -> None:
    a, b = pair
    data = mutate(a.probe(b))
    rejected(reason, lambda: b.decode(data))


def test_unknown_sender_rejected(pair: tuple[Node, Node]) -> None:
    _, b = pair
    stranger = Node()
    stranger.knows(b)
    data = stranger.probe(b)
    rejected(Reject.UNKNOWN_KEY, lambda: b.decode(data))


def test_message_for_another_recipient_rejected(pair: tuple[Node, Node]) -> None:
    a, b = pair
    c = Node()
    c.knows(a)
    a.knows(c)
    data = a.probe(c)
    rejected(Reject.RECIPIENT, lambda: b.decode(data))


def test_forged_mac_with_guessed_key_rejected(pair: tuple[Node, Node]) -> None:
    a, b = pair
    data = reseal(a.probe(b), b"\x00" * 32)
    rejected(Reject.MAC, lambda: b.decode(data))


def test_reply_sealed_with_wrong_pair_key_rejected(pair: tuple[Node, Node]) -> None:
    """A third node C (a known peer) cannot speak for B: its key with A is not A-B's."""
    a, b = pair
    c = Node()
    a.knows(c)
    c.knows(a)
    probe = b.decode(a.probe(b))
    assert isinstance(probe, Probe)
    reply = b.codec.encode_reply(probe, OBSERVED)
    forged = reseal(reply, derive_shared(c.key, a.public, KDF_CONTEXT))
    rejected(Reject.MAC, lambda: a.decode(forged))


def test_low_order_sender_key_rejected(pair: tuple[Node, Node]) -> None:
    _, b = pair
    zero = PublicKey(bytes(32))
    b.peers.add(zero)
    data = bytearray(b.codec.encode_probe(b.public)[1])  # any well-formed message
    data[8:40] = zero.raw
    rejected(Reject.UNKNOWN_KEY, lambda: b.decode(bytes(data)))


@pytest.mark.parametrize("skew", [-31.0, 31.0, -3600.0])
def test_stale_timestamp_rejected(pair: tuple[Node, Node], skew: float) -> None:
    a, b = pair
    a.clock.t = NOW + skew
    data = a.probe(b)
    rejected(Reject.STALE, lambda: b.decode(data))


@pytest.mark.parametrize("skew", [-29.0, 29.0])
def test_timestamp_within_window_accepted(pair: tuple[Node, Node], skew: float) -> None:
    a, b = pair
    a.clock.t = NOW + skew
    assert isinstance(b.decode(a.probe(b)), Probe)


def test_replayed_probe_rejected(pair: tuple[Node, Node]) -> None:
    a, b = pair
    data = a.probe(b)
    b.decode(data)
    rejected(Reject.REPLAY, lambda: b.decode(data))


def test_replayed_reply_rejected(pair: tuple[Node, Node]) -> None:
    a, b = pair
    reply = b.answer(a.probe(b))
    a.decode(reply)
    rejected(Reject.REPLAY, lambda: a.decode(reply))


def test_reply_to_a_probe_still_outstanding_but_replayed_rejected(
    pair: tuple[Node, Node],
) -> None:
    """Even if the echoed nonce were still outstanding, the reply's own nonce is spent."""
    a, b = pair
    probe = a.probe(b)
    reply = b.answer(probe)
    echo = next(iter(a.outstanding))
    a.decode(reply)
    a.outstanding[echo] = b.public
    rejected(Reject.REPLAY, lambda: a.decode(reply))


def test_unsolicited_reply_rejected(pair: tuple[Node, Node]) -> None:
    a, b = pair
    forged_probe = Probe(a.public, b"\x11" * 16, int(NOW * 1000))
    reply = b.codec.encode_reply(forged_probe, OBSERVED)
    rejected(Reject.UNSOLICITED, lambda: a.decode(reply))


def test_reply_from_another_peer_with_the_same_ip_cannot_validate() -> None:
    """Overlapping clouds: A probes 10.0.0.5 for B, but C (a real peer, with a valid key
    of its own) owns 10.0.0.5 here. C's authentic reply echoes a probe sent to B's key,
    so it validates nothing -- and C never even gets that far without forging."""
    a, b, c = Node(), Node(), Node()
    a.knows(b, c)
    c.knows(a)
    data = a.probe(b)  # sent to 10.0.0.5, meant for B
    # C's own prober drops it: it is addressed to B's key
    rejected(Reject.RECIPIENT, lambda: c.decode(data))
    # a C that answers anyway, as itself, with a correct C-A MAC
    probe = Probe(a.public, data[72:88], int(NOW * 1000))
    reply = c.codec.encode_reply(probe, OBSERVED)
    rejected(Reject.UNSOLICITED, lambda: a.decode(reply))
    # ... or claiming to be B: it cannot compute the A-B key
    forged = bytearray(reply)
    forged[8:40] = b.public.raw
    rejected(Reject.MAC, lambda: a.decode(bytes(forged)))
    assert a.outstanding  # the probe is still waiting for B


def test_rejected_message_leaves_no_replay_state(pair: tuple[Node, Node]) -> None:
    a, b = pair
    data = a.probe(b)
    rejected(Reject.MAC, lambda: b.decode(data[:-1] + bytes([data[-1] ^ 1])))
    assert isinstance(b.decode(data), Probe)


def test_replay_cache_is_bounded_and_eviction_does_not_reopen_replays() -> None:
    a, b = Node(replay_capacity=4), Node(replay_capacity=4)
    a.knows(b)
    b.knows(a)
    sent = []
    for i in range(10):
        a.clock.t = b.clock.t = NOW + i * 0.01
        data = a.probe(b)
        b.decode(data)
        sent.append(data)
    assert a.public in b.codec.cached_peers()[1]
    assert b.codec.replay_entries(a.public) == 4
    for data in sent:  # evicted or not, every one of them is refused
        rejected(Reject.REPLAY, partial(b.decode, data))


def test_replay_cache_expires_old_entries() -> None:
    a, b = Node(window=1.0), Node(window=1.0)
    a.knows(b)
    b.knows(a)
    b.decode(a.probe(b))
    a.clock.t = b.clock.t = NOW + 5
    b.decode(a.probe(b))
    assert a.public in b.codec.cached_peers()[1]
    assert b.codec.replay_entries(a.public) == 1


def test_retain_forgets_departed_peers(pair: tuple[Node, Node]) -> None:
    a, b = pair
    b.decode(a.probe(b))
    keys, replay = b.codec.cached_peers()
    assert a.public in keys and a.public in replay
    b.codec.retain(set())
    assert b.codec.cached_peers() == (frozenset(), frozenset())


def test_peek_recipient_ignores_other_traffic() -> None:
    assert peek_recipient(b"hello") is None
    assert peek_recipient(b"XXXX" + bytes(200)) is None
