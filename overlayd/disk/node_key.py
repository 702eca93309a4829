"""The node key file, one X25519 key for WireGuard and probes (``overlayd/values/keys.py``).

The private key lives in ``<state dir>/node-key`` as base64 (the format of ``wg genkey``,
so ``wg pubkey < node-key`` works), mode 0600, outside tmpfs, so it survives reboots -- unlike
flannel's. It is created atomically and never overwritten at creation; a file readable
by anyone but its owner is refused, because the secret may have leaked (``repair=True``
narrows the mode instead, for operators who know it did not). ``NodeKey.rotate`` (key
rotation, overlayd/agent/rotation.py) is the one place that replaces it: a new key is written
to a 0600 temporary file, fsynced and renamed over the old one, so a crash leaves either
the old key or the new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from overlayd.values.errors import OverlaydError
from overlayd.values.keys import PrivateKey, PublicKey, derive_shared

log = logging.getLogger("overlayd.keys")

KEY_FILE = "node-key"


class NodeKeyError(OverlaydError):
    """The node key file is missing, damaged or has unsafe permissions."""

    hint = "check the key file under --state-dir (mode 0600, owned by the daemon's user)"


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
