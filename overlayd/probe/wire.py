"""The probe wire format: authenticated PROBE and REPLY datagrams (docs/probe-protocol.md).

Pure: no sockets, no event loop. ``ProbeCodec`` holds one node identity (its private key),
the per-peer MAC keys derived from it, and the per-peer replay caches; it encodes messages
and decodes received ones, raising ``ProbeError`` (with a ``Reject`` reason the caller
counts) for anything that must not be acted upon.

Layout (network byte order), common header::

    0   4  magic "OVPR"
    4   1  version (1)
    5   1  type (1 PROBE, 2 REPLY)
    6   2  reserved, zero
    8  32  sender public key
   40  32  recipient public key
   72  16  nonce (random)
   88   8  sender wall-clock time, milliseconds since the Unix epoch

A REPLY continues with the echoed probe nonce (16), the probe's source address as the
replier saw it (IPv4, 4), its source port (2) and 2 reserved bytes. Every message ends in
a 16-byte tag: HMAC-SHA256 over everything before it, truncated, keyed with
``derive_shared(my_private, peer_public, b"overlayd-probe-v1")``.

Why HMAC and not an AEAD: nothing in a probe is secret (keys are public, the reflexive
address is what every router on the path sees), so only integrity is needed. HMAC-SHA256 is
in the standard library (hashlib runs in C), has no nonce whose reuse would break
it (AES-GCM and ChaCha20-Poly1305 do), and a 128-bit tag is far beyond what online
forgery can reach. The codec keeps the hashed key blocks of its recent peers (``_Mac``),
so a tag costs two hash copies rather than a key set-up.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from ipaddress import IPv4Address

from overlayd.values.errors import OverlaydError
from overlayd.values.keys import PrivateKey, PublicKey, derive_shared

MAGIC = b"OVPR"
VERSION = 1
DEFAULT_PORT = 8473
"""UDP port of the probe protocol (VXLAN uses 8472; the next one is easy to remember)."""
KDF_CONTEXT = b"overlayd-probe-v1"
NONCE_LEN = 16
MAC_LEN = 16
DEFAULT_WINDOW = 30.0
"""Seconds a timestamp may differ from our clock: tolerates clock skew between clouds."""
DEFAULT_REPLAY_CAPACITY = 32
"""Nonces remembered per peer; at the default probe rates that is several seconds."""

_HEADER = struct.Struct("!4sBBH32s32s16sQ")
_REPLY_TAIL = struct.Struct("!16s4sHH")
PROBE_LEN = _HEADER.size + MAC_LEN
REPLY_LEN = _HEADER.size + _REPLY_TAIL.size + MAC_LEN


class MsgType(IntEnum):
    PROBE = 1
    REPLY = 2


class Reject(StrEnum):
    """Why a received datagram was dropped; the values are counter names."""

    MALFORMED = "malformed"  # too short, wrong length for its type, reserved bits set
    MAGIC = "magic"
    VERSION = "version"
    TYPE = "type"
    RECIPIENT = "recipient"  # addressed to another key: another host owns this IP
    UNKNOWN_KEY = "unknown-key"
    MAC = "mac"
    STALE = "stale"  # timestamp outside the window
    REPLAY = "replay"
    UNSOLICITED = "unsolicited"  # reply to no outstanding probe sent to that peer


class ProbeError(OverlaydError):
    """A probe datagram was rejected (``reason``) or could not be built."""

    def __init__(self, reason: Reject, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Probe:
    """An authenticated probe from a known peer."""

    sender: PublicKey
    nonce: bytes
    sent_ms: int


@dataclass(frozen=True)
class Reply:
    """An authenticated reply to one of our outstanding probes.

    ``observed`` is the source address and port of our probe as the replier saw it: our
    reflexive address on the path the probe took.
    """

    sender: PublicKey
    nonce: bytes
    sent_ms: int
    echo: bytes
    observed: tuple[IPv4Address, int]


Message = Probe | Reply


_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_HOT_PEERS = 1024
"""Peers whose ``_Mac`` is kept: ~0.5 KiB each, bounded; the fast ones stay in it."""


class _Mac:
    """HMAC-SHA256 (RFC 2104) with one key whose padded blocks are hashed once, as
    ``hmac.HMAC``'s Python code does it: a tag then costs two copies of a hash state, not
    the key set-up of ``hmac.digest`` (~half the CPU of a probe's two tags). Keys are 32
    bytes, shorter than SHA-256's 64-byte block, so they are only zero-padded."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        block = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(block.translate(_IPAD))
        self._outer = hashlib.sha256(block.translate(_OPAD))

    def tag(self, body: bytes) -> bytes:
        """The truncated tag of ``body``."""
        inner = self._inner.copy()
        inner.update(body)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:MAC_LEN]


class _ReplayCache:
    """The nonces recently accepted from one peer, bounded.

    A nonce is remembered until it is older than the window (after which the timestamp
    check refuses it anyway) or until it is evicted to make room. Eviction raises
    ``floor``: messages stamped at or before the newest evicted timestamp are refused, so
    forgetting a nonce never reopens a replay -- at worst a message delayed by more than
    the cache's span is dropped, which a probe protocol tolerates.
    """

    __slots__ = ("capacity", "floor", "seen")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.floor = -1
        self.seen: dict[bytes, int] = {}  # insertion order ~ timestamp order

    def check(self, nonce: bytes, sent_ms: int) -> bool:
        return sent_ms > self.floor and nonce not in self.seen

    def add(self, nonce: bytes, sent_ms: int, oldest_ms: int) -> None:
        seen = self.seen
        # drop expired entries from the front: insertion order is roughly time order
        while seen:
            first = next(iter(seen))
            if seen[first] >= oldest_ms:
                break
            del seen[first]
        while len(seen) >= self.capacity:
            first = next(iter(seen))
            self.floor = max(self.floor, seen.pop(first))
        seen[nonce] = sent_ms


class ProbeCodec:
    """Encodes and checks probe messages for one local identity."""

    def __init__(
        self,
        private: PrivateKey,
        *,
        window: float = DEFAULT_WINDOW,
        replay_capacity: int = DEFAULT_REPLAY_CAPACITY,
        clock: Callable[[], float] = time.time,
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._private = private
        self.public = private.public_key()
        self._window_ms = int(window * 1000)
        self._capacity = replay_capacity
        self._clock = clock
        self._randbytes = randbytes
        # by the peer's raw key: a bytes object keeps its hash, a PublicKey computes it on
        # every look-up (three of them per message)
        self._keys: dict[bytes, bytes] = {}
        self._replay: dict[bytes, _ReplayCache] = {}
        self._senders: dict[bytes, PublicKey] = {}  # known senders: built once, not per message
        self._macs: dict[bytes, _Mac] = {}  # the peers messages were tagged for lately

    # -- keys ------------------------------------------------------------------------

    def _mac_key(self, peer: PublicKey) -> bytes:
        key = self._keys.get(peer.raw)
        if key is None:
            try:
                key = derive_shared(self._private, peer, KDF_CONTEXT)
            except ValueError as exc:
                raise ProbeError(Reject.UNKNOWN_KEY, str(exc)) from None
            self._keys[peer.raw] = key
        return key

    def retain(self, peers: Collection[PublicKey]) -> None:
        """Forget MAC keys and replay caches of peers not in ``peers`` (bounds memory)."""
        keep = {p.raw for p in peers}
        for table in (self._keys, self._replay, self._senders, self._macs):
            for gone in [k for k in table if k not in keep]:
                del table[gone]

    def cached_peers(self) -> tuple[frozenset[PublicKey], frozenset[PublicKey]]:
        """The peers whose MAC key, and whose replay cache, this codec holds now."""
        return frozenset(map(PublicKey, self._keys)), frozenset(map(PublicKey, self._replay))

    def replay_entries(self, peer: PublicKey) -> int:
        """How many of ``peer``'s nonces the replay cache remembers (bounded by its capacity)."""
        cache = self._replay.get(peer.raw)
        return 0 if cache is None else len(cache.seen)

    # -- encoding --------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _tag(self, peer: PublicKey, body: bytes) -> bytes:
        mac = self._macs.get(peer.raw)
        if mac is None:
            if len(self._macs) >= _HOT_PEERS:  # the oldest goes: an idle peer's, mostly
                del self._macs[next(iter(self._macs))]
            mac = self._macs[peer.raw] = _Mac(self._mac_key(peer))
        return mac.tag(body)

    def _seal(self, peer: PublicKey, body: bytes) -> bytes:
        return body + self._tag(peer, body)

    def encode_probe(self, peer: PublicKey) -> tuple[bytes, bytes]:
        """A PROBE for ``peer``: ``(nonce, datagram)``; keep the nonce to match the reply."""
        nonce = self._randbytes(NONCE_LEN)
        body = _HEADER.pack(
            MAGIC, VERSION, MsgType.PROBE, 0, self.public.raw, peer.raw, nonce, self._now_ms()
        )
        return nonce, self._seal(peer, body)

    def encode_reply(self, probe: Probe, observed: tuple[IPv4Address, int]) -> bytes:
        """The REPLY to ``probe``, reporting where it came from (``observed``)."""
        body = _HEADER.pack(
            MAGIC,
            VERSION,
            MsgType.REPLY,
            0,
            self.public.raw,
            probe.sender.raw,
            self._randbytes(NONCE_LEN),
            self._now_ms(),
        ) + _REPLY_TAIL.pack(probe.nonce, observed[0].packed, observed[1], 0)
        return self._seal(probe.sender, body)

    # -- decoding --------------------------------------------------------------------

    def decode(
        self,
        data: bytes,
        *,
        known: Callable[[PublicKey], bool],
        expects_reply: Callable[[PublicKey, bytes], bool],
    ) -> Message:
        """Check ``data`` and return the message, or raise ``ProbeError``.

        ``known(key)``: is the sender a current peer. ``expects_reply(key, nonce)``: is
        ``nonce`` an outstanding probe we sent to the peer with that key. Cheap checks run
        first and the MAC before anything that keeps state, so unauthenticated traffic can
        neither fill the replay cache nor cost more than one HMAC.
        """
        size = len(data)
        kind, sender, nonce, sent_ms = self._check_header(data, known)
        body = data[: size - MAC_LEN]
        tag = self._tag(sender, body)
        if not hmac.compare_digest(tag, data[size - MAC_LEN :]):
            raise ProbeError(Reject.MAC, f"bad MAC on a message claiming to be from {sender}")
        now_ms = self._now_ms()
        if abs(sent_ms - now_ms) > self._window_ms:
            raise ProbeError(
                Reject.STALE, f"timestamp {(sent_ms - now_ms) / 1000:+.1f}s off from {sender}"
            )
        cache = self._replay.get(sender.raw)
        if cache is None:
            cache = self._replay[sender.raw] = _ReplayCache(self._capacity)
        if not cache.check(nonce, sent_ms):
            raise ProbeError(Reject.REPLAY, f"replayed message from {sender}")
        message: Message
        if kind == MsgType.PROBE:
            message = Probe(sender, nonce, sent_ms)
        else:
            message = _reply_of(data, sender, nonce, sent_ms, expects_reply)
        # remembered only once accepted: a rejected message leaves no state behind
        cache.add(nonce, sent_ms, now_ms - self._window_ms)
        return message

    def _check_header(
        self, data: bytes, known: Callable[[PublicKey], bool]
    ) -> tuple[int, PublicKey, bytes, int]:
        """The checks that cost no HMAC: ``(type, sender, nonce, sent_ms)`` of a message of
        the right size, for us, from a known peer; ``ProbeError`` otherwise."""
        size = len(data)
        if size < _HEADER.size + MAC_LEN:
            raise ProbeError(Reject.MALFORMED, f"{size} bytes is too short")
        magic, version, kind, reserved, sender_raw, recipient_raw, nonce, sent_ms = (
            _HEADER.unpack_from(data)
        )
        if magic != MAGIC:
            raise ProbeError(Reject.MAGIC, "not a probe message")
        if version != VERSION:
            raise ProbeError(Reject.VERSION, f"version {version} (we speak {VERSION})")
        if kind == MsgType.PROBE:
            expected = PROBE_LEN
        elif kind == MsgType.REPLY:
            expected = REPLY_LEN
        else:
            raise ProbeError(Reject.TYPE, f"unknown message type {kind}")
        if size != expected or reserved:
            raise ProbeError(Reject.MALFORMED, f"bad {MsgType(kind).name} of {size} bytes")
        if recipient_raw != self.public.raw:
            raise ProbeError(
                Reject.RECIPIENT, f"addressed to {PublicKey(recipient_raw)}, not to us"
            )
        sender = self._senders.get(sender_raw) or PublicKey(sender_raw)
        if not known(sender):
            raise ProbeError(Reject.UNKNOWN_KEY, f"sender {sender} is not a peer")
        self._senders.setdefault(sender_raw, sender)  # bounded: known peers only (``retain``)
        return kind, sender, nonce, sent_ms


def _reply_of(
    data: bytes,
    sender: PublicKey,
    nonce: bytes,
    sent_ms: int,
    expects_reply: Callable[[PublicKey, bytes], bool],
) -> Reply:
    """The REPLY in authenticated ``data``, if it answers a probe outstanding to ``sender``."""
    echo, ip, port, tail_reserved = _REPLY_TAIL.unpack_from(data, _HEADER.size)
    if tail_reserved:
        raise ProbeError(Reject.MALFORMED, "reserved reply bytes set")
    if not expects_reply(sender, echo):
        raise ProbeError(Reject.UNSOLICITED, f"reply from {sender} to no probe outstanding to it")
    return Reply(sender, nonce, sent_ms, echo, (IPv4Address(ip), port))


def peek_recipient(data: bytes) -> PublicKey | None:
    """The recipient key of a datagram that looks like a probe message, else None.

    For a responder serving several identities on one socket (the benchmark).
    """
    if len(data) < _HEADER.size or data[:4] != MAGIC:
        return None
    return PublicKey(data[40:72])
