"""The node's long-term X25519 key: one identity for WireGuard and for authenticated probes.

Why one key and not two: WireGuard static keys *are* X25519 (Curve25519) keys, so the key
WireGuard uses can also do a plain X25519 exchange with a peer's public key. With one
identity the lease carries one public key, and a probe reply authenticated with the shared
secret of that key proves that the responder holds exactly the private key WireGuard will
use towards it -- a probe cannot verify one host while the tunnel ends at another. The
probes never use the raw X25519 output: ``derive_shared`` runs it through HKDF-SHA256 with
a context label and both public keys, so probe keys are domain-separated from anything
WireGuard derives (WireGuard itself runs its own Noise KDF over its DH outputs).

Values and derivation only; the key file is ``overlayd/disk/node_key.py``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_LEN = 32


def _check_len(raw: bytes, what: str) -> None:
    if len(raw) != KEY_LEN:
        raise ValueError(f"a {what} has {KEY_LEN} bytes, got {len(raw)}")


def _decode_b64(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except binascii.Error:
        raise ValueError(f"invalid base64 {what}") from None
    _check_len(raw, what)
    return raw


@dataclass(frozen=True, order=True, slots=True)
class PublicKey:
    """An X25519 / WireGuard public key: 32 bytes, shown in base64 as ``wg`` shows it."""

    raw: bytes

    def __post_init__(self) -> None:
        _check_len(self.raw, "public key")

    @classmethod
    def from_base64(cls, text: str) -> PublicKey:
        return cls(_decode_b64(text, "public key"))

    @classmethod
    def from_hex(cls, text: str) -> PublicKey:
        return cls(bytes.fromhex(text))

    @property
    def base64(self) -> str:
        return base64.b64encode(self.raw).decode()

    @property
    def hex(self) -> str:
        return self.raw.hex()

    def __str__(self) -> str:
        return self.base64

    def __repr__(self) -> str:
        return f"PublicKey({self.base64!r})"


@dataclass(frozen=True, slots=True)
class PrivateKey:
    """An X25519 / WireGuard private key. Its bytes never appear in repr, str or logs."""

    raw: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_len(self.raw, "private key")

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(X25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def from_base64(cls, text: str) -> PrivateKey:
        return cls(_decode_b64(text, "private key"))

    def public_key(self) -> PublicKey:
        return PublicKey(
            X25519PrivateKey.from_private_bytes(self.raw).public_key().public_bytes_raw()
        )

    def reveal_base64(self) -> str:
        """The secret in ``wg genkey`` format; only for writing the key file."""
        return base64.b64encode(self.raw).decode()

    def reveal_hex(self) -> str:
        """The secret in hex; only for the WireGuard UAPI."""
        return self.raw.hex()

    def __str__(self) -> str:
        return f"<private key of {self.public_key()}>"


def derive_shared(private: PrivateKey, peer_public: PublicKey, context: bytes) -> bytes:
    """A 32-byte key both ends compute alike: HKDF-SHA256 over X25519(private, peer_public).

    ``context`` labels the use (e.g. ``b"overlayd probe v1"``), so keys for different
    purposes never coincide. Both public keys go into the HKDF info, in sorted order so the
    two ends agree; this binds the key to the pair, not just to the DH output. A peer
    public key of small order (all-zero shared secret) is rejected with ``ValueError``.
    """
    ours = private.public_key()
    try:
        secret = X25519PrivateKey.from_private_bytes(private.raw).exchange(
            X25519PublicKey.from_public_bytes(peer_public.raw)
        )
    except ValueError:
        raise ValueError(f"no shared secret with {peer_public}: low-order public key") from None
    if secret == bytes(KEY_LEN):
        raise ValueError(f"no shared secret with {peer_public}: low-order public key")
    first, second = sorted((ours.raw, peer_public.raw))
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=context + first + second)
    return hkdf.derive(secret)
