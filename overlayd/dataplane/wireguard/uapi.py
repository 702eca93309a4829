"""Client for WireGuard's cross-platform userspace API (UAPI), as spoken by wireguard-go.

A userspace implementation listens on ``/var/run/wireguard/<ifname>.sock`` (stream unix
socket) and answers two text requests, each a list of ``key=value`` lines ended by an
empty line:

* ``get=1`` -> device lines (``private_key``, ``listen_port``, ``fwmark``), then per peer a
  ``public_key`` line followed by its lines, then ``errno=0``.
* ``set=1`` -> the same keys, plus the peer operations ``remove=true``,
  ``update_only=true`` (do not create the peer) and ``replace_allowed_ips=true``; answered
  by ``errno=N`` (0 = success; wireguard-go sends negative errno values).

Keys are hex on this socket (base64 is only ``wg``'s presentation). Encoding and parsing
are pure functions so they are tested without a daemon; ``UapiClient`` does the I/O, one
connection per request (after an error wireguard-go stops reading mid-request, so a
connection is never reused).
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

from overlayd.values.errors import WireGuardError
from overlayd.values.keys import PrivateKey, PublicKey
from overlayd.values.wireguard import (
    DeviceUpdate,
    Endpoint,
    PeerChanges,
    PresharedKey,
    WgPeerConfig,
    WgPeerState,
    WgState,
)

UAPI_DIR = Path("/var/run/wireguard")
_ZERO_KEY_HEX = "00" * 32
_MAX_RESPONSE = 16 << 20


class UapiUnavailable(WireGuardError):
    """Nothing answers on the UAPI socket (wireguard-go is not running)."""


def socket_path(ifname: str, directory: Path = UAPI_DIR) -> Path:
    """Where wireguard-go listens for ``ifname``."""
    return directory / f"{ifname}.sock"


def _peer_lines(peer: WgPeerConfig, *, update_only: bool) -> Iterator[str]:
    yield f"public_key={peer.public_key.hex}"
    if update_only:
        # must come right after public_key: it stops the line above from creating the peer
        yield "update_only=true"
    psk = peer.preshared_key.raw.hex() if peer.preshared_key else _ZERO_KEY_HEX
    yield f"preshared_key={psk}"
    if peer.endpoint is not None:
        yield f"endpoint={peer.endpoint}"
    yield f"persistent_keepalive_interval={peer.persistent_keepalive}"
    yield "replace_allowed_ips=true"
    for net in peer.allowed_ips:
        yield f"allowed_ip={net}"


def encode_set(
    changes: PeerChanges,
    *,
    private_key: PrivateKey | None = None,
    listen_port: int | None = None,
    fwmark: int | None = None,
) -> str:
    """The full ``set=1`` request for ``changes`` and the device fields given (None = keep).

    Removals come first (their allowed IPs are free before anyone claims them), then
    updates, then additions. The text holds secrets: never log it.
    """
    lines = ["set=1"]
    if private_key is not None:
        lines.append(f"private_key={private_key.reveal_hex()}")
    if listen_port is not None:
        lines.append(f"listen_port={listen_port}")
    if fwmark is not None:
        lines.append(f"fwmark={fwmark}")
    for key in (*changes.remove, *(p.public_key for p in changes.restart)):
        lines += (f"public_key={key.hex}", "remove=true")
    for peer in changes.update:
        lines += _peer_lines(peer, update_only=True)
    for peer in (*changes.add, *changes.restart):
        lines += _peer_lines(peer, update_only=False)
    return "\n".join(lines) + "\n\n"


def encode_device_update(update: DeviceUpdate) -> str:
    """The ``set=1`` request applying ``update`` (e.g. ``private_key=`` for a rotation).

    wireguard-go keeps every peer; it recomputes their static-static secrets and expires
    the current sessions. The only peer lines are the ``kicks`` (``update_only``, the
    keepalive interval alone: wireguard-go sends a keepalive at the end of a peer's lines
    when the interval went from 0 to non-zero). The text holds the secret: never log it.
    """
    text = encode_set(
        PeerChanges(),
        private_key=update.private_key,
        listen_port=update.listen_port,
        fwmark=update.fwmark,
    )
    kicks = [
        f"public_key={key.hex}\nupdate_only=true\npersistent_keepalive_interval={interval}\n"
        for key, interval in update.kicks
    ]
    return text[:-1] + "".join(kicks) + "\n"


@dataclass
class _PeerBuilder:
    public_key: PublicKey
    endpoint: Endpoint | None = None
    allowed_ips: list[IPv4Network] | None = None
    foreign_allowed_ips: list[str] | None = None
    keepalive: int = 0
    psk: PresharedKey | None = None
    hs_sec: int = 0
    hs_nsec: int = 0
    rx: int = 0
    tx: int = 0

    def build(self) -> WgPeerState:
        config = WgPeerConfig(
            self.public_key,
            self.endpoint,
            tuple(self.allowed_ips or ()),
            self.keepalive,
            self.psk,
        )
        handshake = self.hs_sec + self.hs_nsec / 1e9 if self.hs_sec or self.hs_nsec else None
        return WgPeerState(
            config, handshake, self.rx, self.tx, tuple(self.foreign_allowed_ips or ())
        )

    def set(self, key: str, value: str) -> None:
        if key == "endpoint":
            try:
                self.endpoint = Endpoint.parse(value)
            except ValueError:
                self.endpoint = None  # IPv6 endpoint: not ours; a desired one replaces it
        elif key == "allowed_ip":
            try:
                self.allowed_ips = [*(self.allowed_ips or []), IPv4Network(value)]
            except ValueError:  # IPv6: not ours; kept so the diff replaces it
                self.foreign_allowed_ips = [*(self.foreign_allowed_ips or []), value]
        elif key == "persistent_keepalive_interval":
            self.keepalive = int(value)
        elif key == "preshared_key":
            self.psk = None if value == _ZERO_KEY_HEX else PresharedKey(bytes.fromhex(value))
        elif key == "last_handshake_time_sec":
            self.hs_sec = int(value)
        elif key == "last_handshake_time_nsec":
            self.hs_nsec = int(value)
        elif key == "rx_bytes":
            self.rx = int(value)
        elif key == "tx_bytes":
            self.tx = int(value)
        # protocol_version and keys from newer versions: nothing we act on


def parse_get(text: str) -> WgState:
    """Parse a ``get=1`` response (everything before the final ``errno`` line).

    ``WireGuardError`` on a malformed line or a non-zero errno.
    """
    public_key: PublicKey | None = None
    listen_port = 0
    fwmark = 0
    peers: dict[PublicKey, WgPeerState] = {}
    current: _PeerBuilder | None = None
    for line in text.splitlines():
        if not line:
            break
        key, sep, value = line.partition("=")
        if not sep:
            raise WireGuardError(f"malformed UAPI line {line.split('=')[0][:40]!r}")
        try:
            if key == "errno":
                _check_errno(int(value), "get")
            elif key == "public_key":
                if current is not None:
                    peers[current.public_key] = current.build()
                current = _PeerBuilder(PublicKey.from_hex(value))
            elif current is not None:
                current.set(key, value)
            elif key == "private_key":
                public_key = PrivateKey(bytes.fromhex(value)).public_key()
            elif key == "listen_port":
                listen_port = int(value)
            elif key == "fwmark":
                fwmark = int(value)
        except ValueError:
            # the value may be a secret: name only the key
            raise WireGuardError(f"malformed UAPI value for {key!r}") from None
    if current is not None:
        peers[current.public_key] = current.build()
    return WgState(public_key, listen_port, fwmark, peers)


def _check_errno(code: int, what: str) -> None:
    if code != 0:
        name = os.strerror(abs(code))
        raise WireGuardError(f"wireguard-go rejected {what}: errno {code} ({name})")


class UapiClient:
    """Talks to one wireguard-go instance over its UAPI socket."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise UapiUnavailable(f"no wireguard-go at {self.path}: {exc.strerror}") from None
        except OSError as exc:
            sock.close()
            raise WireGuardError(f"cannot connect to {self.path}: {exc}") from None
        return sock

    def _request(self, request: str) -> str:
        with self._connect() as sock:
            try:
                sock.sendall(request.encode())
                chunks: list[bytes] = []
                size = 0
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > _MAX_RESPONSE:
                        raise WireGuardError(f"UAPI response from {self.path} too large")
                    # the answer ends with an empty line; for a get only after errno=
                    tail = b"".join(chunks[-2:])
                    if tail.endswith(b"\n\n"):
                        break
            except OSError as exc:
                raise WireGuardError(f"UAPI request to {self.path} failed: {exc}") from None
        data = b"".join(chunks).decode("utf-8", errors="replace")
        if not data.endswith("\n\n"):
            raise WireGuardError(f"UAPI connection to {self.path} closed mid-answer")
        return data

    def get(self) -> WgState:
        """The device's current configuration and peer state."""
        return parse_get(self._request("get=1\n\n"))

    def set(self, request: str) -> None:
        """Send a request built by ``encode_set``; ``WireGuardError`` if rejected."""
        answer = self._request(request)
        key, _, value = answer.strip().partition("=")
        if key != "errno" or not value.lstrip("-").isdigit():
            raise WireGuardError(f"unexpected UAPI answer from {self.path}")
        _check_errno(int(value), "set")

    def server_pid(self) -> int:
        """The pid of the process serving the socket (SO_PEERCRED)."""
        with self._connect() as sock:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid: int = struct.unpack("3i", creds)[0]
        return pid
