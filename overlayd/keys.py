"""The node's long-term X25519 key: one identity for WireGuard and for authenticated probes.

Why one key and not two: WireGuard static keys *are* X25519 (Curve25519) keys, so the key
WireGuard uses can also do a plain X25519 exchange with a peer's public key. With one
identity the lease carries one public key, and a probe reply authenticated with the shared
secret of that key proves that the responder holds exactly the private key WireGuard will
use towards it -- a probe cannot verify one host while the tunnel ends at another. The
probes never use the raw X25519 output: ``derive_shared`` runs it through HKDF-SHA256 with
a context label and both public keys, so probe keys are domain-separated from anything
WireGuard derives (WireGuard itself runs its own Noise KDF over its DH outputs).

The private key lives in ``<state dir>/node-key`` as base64 (the format of ``wg genkey``, so
``wg pubkey < node-key`` works), mode 0600, outside tmpfs, so it survives reboots -- unlike
flannel's. It is created atomically and never overwritten at creation; a file readable
by anyone but its owner is refused, because the secret may have leaked (``repair=True``
narrows the mode instead, for operators who know it did not). ``NodeKey.rotate`` (key
rotation, overlayd/rotation.py) is the one place that replaces it: a new key is written
to a 0600 temporary file, fsynced and renamed over the old one, so a crash leaves either
the old key or the new one, never a torn file.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from overlayd.errors import OverlaydError

log = logging.getLogger("overlayd.keys")

KEY_LEN = 32
KEY_FILE = "node-key"


class NodeKeyError(OverlaydError):
    """The node key file is missing, damaged or has unsafe permissions."""

    hint = "check the key file under --state-dir (mode 0600, owned by the daemon's user)"


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


@dataclass(frozen=True, order=True)
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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class NodeKey:
    """The node's key pair, as loaded from (or created in) the state dir."""

    private: PrivateKey = field(repr=False)
    public: PublicKey
    path: Path

    @classmethod
    def load_or_create(cls, state_dir: Path, *, repair: bool = False) -> NodeKey:
        """Load ``<state_dir>/node-key``, generating it on first start.

        Raises ``NodeKeyError`` when the file is not a regular file owned by us, is damaged,
        or is accessible to group/others (unless ``repair`` is set: then the mode is
        narrowed to 0600 and a warning logged).
        """
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise NodeKeyError(f"cannot create state dir {state_dir}: {exc.strerror}") from None
        path = state_dir / KEY_FILE
        private = _read_key(path, repair=repair)
        if private is None:
            private = _create_key(path)
        return cls(private, private.public_key(), path)

    def derive_shared(self, peer_public: PublicKey, context: bytes) -> bytes:
        """``derive_shared`` with this node's private key."""
        return derive_shared(self.private, peer_public, context)

    def rotate(self) -> NodeKey:
        """A new key pair, persisted atomically in place of this one (mode 0600).

        The old private key is gone from disk once this returns; ``NodeKeyError`` when
        the new key cannot be written (the old file is then left as it was).
        """
        private = PrivateKey.generate()
        _write_key(self.path, private, replace=True)
        return NodeKey(private, private.public_key(), self.path)


def _read_key(path: Path, *, repair: bool) -> PrivateKey | None:
    try:
        # O_NOFOLLOW: a symlink planted in the state dir must not redirect us
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise NodeKeyError(f"cannot open node key {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise NodeKeyError(f"node key {path} is not a regular file")
        if info.st_uid != os.geteuid():
            raise NodeKeyError(
                f"node key {path} is owned by uid {info.st_uid}, not by us ({os.geteuid()})"
            )
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            if not repair:
                raise NodeKeyError(
                    f"node key {path} has mode {mode:04o}: group/others may have read it",
                    hint=f"if it cannot have leaked, 'chmod 600 {path}'; otherwise delete it "
                    "to generate a new key (peers pick up the new public key from the lease)",
                )
            log.warning("node key %s had mode %04o; narrowed to 0600", path, mode)
            os.fchmod(handle.fileno(), 0o600)
        text = handle.read().decode("ascii", errors="replace")
    try:
        return PrivateKey.from_base64(text)
    except ValueError as exc:
        raise NodeKeyError(f"node key {path} is damaged: {exc}") from None


def _create_key(path: Path) -> PrivateKey:
    private = PrivateKey.generate()
    existing = _write_key(path, private, replace=False)
    if existing is not None:
        return existing
    log.info("generated node key %s (public key %s)", path, private.public_key())
    return private


def _write_key(path: Path, private: PrivateKey, *, replace: bool) -> PrivateKey | None:
    """Write ``private`` to ``path`` through a 0600 temporary file, durably.

    ``replace``: rename over an existing key (rotation). Otherwise link, which never
    replaces a key another process created meanwhile: that key is returned instead.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    made = False  # only a temporary file this call created is removed afterwards
    try:
        # created 0600 by open() itself: there is no moment where it is wider
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        made = True
        with os.fdopen(fd, "w") as handle:
            handle.write(private.reveal_base64() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            # rename replaces atomically: readers see the old key or the new one
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                existing = _read_key(path, repair=False)
                if existing is None:
                    raise NodeKeyError(f"node key {path} vanished while being created") from None
                return existing
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)  # the rename/link itself survives a crash
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise NodeKeyError(f"cannot write node key {path}: {exc.strerror}") from None
    finally:
        if made:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return None
