"""WireGuard configuration and state as pure values, and the per-peer diff between them.

The planner produces the desired ``WgPeerConfig`` set, a driver reads the actual
``WgState`` back from the device, and ``diff_peers`` says which peers to add, update or
remove. Changes are always per peer (never WireGuard's ``replace_peers``), so adding or
removing a node leaves the sessions of every other peer alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network

from overlayd.values.keys import KEY_LEN, PrivateKey, PublicKey

IFNAME_PREFIX = "ovwg"
DEFAULT_LISTEN_PORT = 51820


def interface_name(node_id: str) -> str:
    """The WireGuard device name for a node: ``ovwg`` + 8 hex chars of SHA-256(node id).

    wireguard-go puts its UAPI socket at ``/var/run/wireguard/<ifname>.sock``, one
    directory shared by every network namespace on the machine, and refuses to start when
    another instance answers on that path. Daemons in different namespaces on one machine
    (the test world, or several nodes on one host) therefore need different names; the
    node id is random per node, so 32 bits of its hash make a collision unlikely. 12
    characters fit the kernel's 15-character limit.
    """
    return IFNAME_PREFIX + hashlib.sha256(node_id.encode()).hexdigest()[:8]


@dataclass(frozen=True, slots=True)
class PresharedKey:
    """A WireGuard pre-shared key (32 random bytes); never shown in repr or logs."""

    raw: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.raw) != KEY_LEN:
            raise ValueError(f"a pre-shared key has {KEY_LEN} bytes, got {len(self.raw)}")

    @classmethod
    def from_base64(cls, text: str) -> PresharedKey:
        try:
            return cls(base64.b64decode(text.strip(), validate=True))
        except binascii.Error:
            raise ValueError("invalid base64 pre-shared key") from None

    def __str__(self) -> str:
        return "<pre-shared key>"


@dataclass(frozen=True, order=True, slots=True)
class Endpoint:
    """A peer's underlay address and UDP port."""

    address: IPv4Address
    port: int

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"invalid UDP port {self.port}")

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse ``a.b.c.d:port``; ``ValueError`` for anything else (IPv6 included)."""
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"invalid endpoint {text!r}")
        return cls(IPv4Address(host), int(port))

    def __str__(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class WgPeerConfig:
    """What we want WireGuard to know about one peer.

    ``endpoint`` None means "learn it from the peer's handshake" (a peer that can only
    dial out). ``allowed_ips`` is kept sorted and deduplicated so equal configs compare
    equal. ``persistent_keepalive`` is in seconds, 0 = off.
    """

    public_key: PublicKey
    endpoint: Endpoint | None = None
    allowed_ips: tuple[IPv4Network, ...] = ()
    persistent_keepalive: int = 0
    preshared_key: PresharedKey | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_ips", tuple(sorted(set(self.allowed_ips))))
        if not 0 <= self.persistent_keepalive < 65536:
            raise ValueError(f"invalid keepalive interval {self.persistent_keepalive}")


@dataclass(frozen=True)
class WgDeviceConfig:
    """The device-wide settings: the node's private key, UDP port, optional fwmark, MTU.

    ``mtu`` None leaves the device's default (wireguard-go: 1420).
    """

    private_key: PrivateKey = field(repr=False)
    listen_port: int = DEFAULT_LISTEN_PORT
    fwmark: int = 0
    mtu: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.listen_port < 65536:
            raise ValueError(f"invalid listen port {self.listen_port}")

    @property
    def public_key(self) -> PublicKey:
        return self.private_key.public_key()


@dataclass(frozen=True, slots=True)
class WgPeerState:
    """One peer as read back from the device: its config plus counters.

    ``config.endpoint`` is whatever the device currently uses, configured or learned.
    ``last_handshake`` is a UNIX time in seconds (float), None before the first handshake.
    ``foreign_allowed_ips`` are allowed IPs our model cannot express (IPv6), put there by
    someone else; their presence makes the peer differ from any desired config.
    """

    config: WgPeerConfig
    last_handshake: float | None = None
    rx_bytes: int = 0
    tx_bytes: int = 0
    foreign_allowed_ips: tuple[str, ...] = ()

    def has_session(self, now: float) -> bool:
        """A handshake younger than ``HANDSHAKE_FRESH`` at UNIX time ``now``: a working
        session."""
        return self.last_handshake is not None and now - self.last_handshake < HANDSHAKE_FRESH


@dataclass(frozen=True)
class WgState:
    """The device as read back: its public key, port, fwmark and peers by public key."""

    public_key: PublicKey | None
    listen_port: int
    fwmark: int
    peers: Mapping[PublicKey, WgPeerState]


@dataclass(frozen=True)
class DeviceUpdate:
    """Device-wide fields a driver must set; None where the device is already right.

    A changed ``private_key`` is a key rotation (overlayd/agent/rotation.py): both drivers set
    it in place, the peers and their allowed IPs stay. ``kicks`` then follow, in order:
    (peer, persistent keepalive interval) settings that switch each peer's keepalive off
    and on again, which makes the device send a keepalive -- and so a handshake
    initiation under the new key -- to every peer at once (``kicks_for``).
    """

    private_key: PrivateKey | None = field(default=None, repr=False)
    listen_port: int | None = None
    fwmark: int | None = None
    kicks: tuple[tuple[PublicKey, int], ...] = ()

    def __bool__(self) -> bool:
        return not (self.private_key is None and self.listen_port is None and self.fwmark is None)


def kicks_for(peers: Mapping[PublicKey, WgPeerState]) -> tuple[tuple[PublicKey, int], ...]:
    """Keepalive settings that make a device initiate a handshake with each of ``peers``
    now, keeping every other setting (sorted by key).

    Why, after a new private key: the device has expired its sessions, and its next packet
    to a peer starts a handshake the peer cannot answer until it has our new public key
    from the lease. If that packet leaves after the peer learned the key, the two
    initiations cross: each side answers the other's and drops the answer to its own, and
    both wait out WireGuard's 5 s retry (seen: 2.2 s of pings lost). Initiating at once,
    before the lease is republished, leaves the peers' initiations to be answered only.
    Both drivers send a keepalive when a peer's interval goes from 0 to non-zero; a peer
    without keepalive gets 1 s and then 0 again.
    """
    out: list[tuple[PublicKey, int]] = []
    for key in sorted(peers, key=lambda k: k.raw):
        interval = peers[key].config.persistent_keepalive
        out += [(key, 0), (key, interval)] if interval else [(key, 1), (key, 0)]
    return tuple(out)


def device_update(state: WgState, device: WgDeviceConfig) -> DeviceUpdate:
    """What to set on a device read back as ``state`` so it carries ``device``'s settings.

    The private key is compared through its public key (what both drivers read back); a
    new one comes with ``kicks_for`` the device's peers.
    """
    rotated = state.public_key != device.public_key
    return DeviceUpdate(
        private_key=device.private_key if rotated else None,
        listen_port=device.listen_port if state.listen_port != device.listen_port else None,
        fwmark=device.fwmark if state.fwmark != device.fwmark else None,
        kicks=kicks_for(state.peers) if rotated and state.public_key is not None else (),
    )


@dataclass(frozen=True)
class PeerChanges:
    """Per-peer operations turning the actual peer set into the desired one, sorted by key.

    ``add``: peers to create (sent without ``update_only``). ``update``: existing peers
    whose config differs, sent with ``update_only`` and ``replace_allowed_ips`` so a peer
    removed meanwhile is not re-created by accident. ``remove``: peers to delete.
    ``restart``: existing peers removed and created again in the same request, because
    their endpoint changed while they have no session (``needs_restart``).
    """

    add: tuple[WgPeerConfig, ...] = ()
    update: tuple[WgPeerConfig, ...] = ()
    remove: tuple[PublicKey, ...] = ()
    restart: tuple[WgPeerConfig, ...] = ()

    def __len__(self) -> int:
        return len(self.add) + len(self.update) + len(self.remove) + len(self.restart)

    def summary(self) -> str:
        restarted = f" ({len(self.restart)} restarted)" if self.restart else ""
        return (
            f"+{len(self.add)} ~{len(self.update) + len(self.restart)} -{len(self.remove)}"
            f" wireguard peers{restarted}"
        )


def peer_differs(desired: WgPeerConfig, actual: WgPeerConfig) -> bool:
    """Whether ``actual`` must be updated to match ``desired``.

    An actual endpoint is only compared when one is desired: a peer configured without
    endpoint gets one from its handshake, and that learned endpoint is not a change.
    """
    if desired.endpoint is not None and desired.endpoint != actual.endpoint:
        return True
    return (
        desired.allowed_ips != actual.allowed_ips
        or desired.persistent_keepalive != actual.persistent_keepalive
        or desired.preshared_key != actual.preshared_key
    )


HANDSHAKE_FRESH = 180.0  # seconds: WireGuard's REJECT_AFTER_TIME; a session this young works


def needs_restart(desired: WgPeerConfig, state: WgPeerState, now: float) -> bool:
    """Whether the peer must be created anew rather than updated: it gets an endpoint (a
    new one) while it has no working session.

    Traffic to a peer without a usable endpoint makes WireGuard attempt a handshake that
    goes nowhere, and WireGuard then holds off its next attempt for REKEY_TIMEOUT (5 s)
    -- an endpoint set meanwhile waits for that retry. A peer created anew starts with no
    attempt on record, and its persistent keepalive (switched on by the creation) sends
    the handshake initiation at once. Nothing is lost: there is no session to keep.
    """
    return (
        desired.endpoint is not None
        and desired.endpoint != state.config.endpoint
        and not state.has_session(now)
    )


def _keep_learned_port(desired: WgPeerConfig, state: WgPeerState, now: float) -> WgPeerConfig:
    """``desired`` with the endpoint the device learned, if only a NAT changed its port.

    Behind masquerade, a peer's WireGuard traffic leaves with a port the NAT picked; the
    device learns it from the peer's authenticated handshake. Overwriting it with the
    published port on every reconcile would cut that session. A different *address* is
    a path change and is applied.
    """
    want, have = desired.endpoint, state.config.endpoint
    if (
        want is not None
        and have is not None
        and want.address == have.address
        and want.port != have.port
        and state.has_session(now)
    ):
        return replace(desired, endpoint=have)
    return desired


def diff_peers(
    desired: Iterable[WgPeerConfig],
    actual: Mapping[PublicKey, WgPeerState],
    *,
    allow_delete: bool = True,
    now: float,
) -> PeerChanges:
    """Per-peer changes that turn ``actual`` into ``desired``.

    With ``allow_delete=False`` no peer is removed (used until the store's first full
    snapshot has loaded, so a restart never drops live peers). ``ValueError`` if
    ``desired`` names a public key twice. ``now`` (UNIX seconds: the clock is the
    caller's) decides whether a handshake is fresh enough to keep its learned port, or
    to update rather than restart a peer (``needs_restart``).
    """
    wanted: dict[PublicKey, WgPeerConfig] = {}
    for peer in desired:
        if peer.public_key in wanted:
            raise ValueError(f"peer {peer.public_key} is desired twice")
        wanted[peer.public_key] = peer
    add: list[WgPeerConfig] = []
    update: list[WgPeerConfig] = []
    restart: list[WgPeerConfig] = []
    for key in sorted(wanted):
        state = actual.get(key)
        if state is None:
            add.append(wanted[key])
            continue
        peer = _keep_learned_port(wanted[key], state, now)
        if needs_restart(peer, state, now):
            restart.append(peer)
        elif state.foreign_allowed_ips or peer_differs(peer, state.config):
            update.append(peer)
    remove = sorted(key for key in actual if key not in wanted) if allow_delete else []
    return PeerChanges(tuple(add), tuple(update), tuple(remove), tuple(restart))
