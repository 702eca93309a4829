"""Key rotation without root: the key file's replacement, the request key and value, the
request's life in ``KeyRotation`` (with an in-memory store), the prober's key switch, and
what both WireGuard drivers are sent (peer diff for a changed public key, device update
for a new private key)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import struct
from collections.abc import AsyncIterator
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from overlayd.agent.rotation import (
    VERB,
    KeyRotation,
    describe_request,
    encode_request,
    key_change,
    short,
)
from overlayd.dataplane.wireguard import kernel, uapi
from overlayd.disk.node_key import KEY_FILE, NodeKey, NodeKeyError
from overlayd.probe.prober import Prober
from overlayd.probe.settings import PeerTarget
from overlayd.probe.wire import ProbeCodec, Reject
from overlayd.store.api import ControlValue, StoreKeys
from overlayd.values.errors import StoreError
from overlayd.values.keys import PrivateKey, PublicKey
from overlayd.values.lease import LeaseRecord
from overlayd.values.wireguard import (
    DeviceUpdate,
    Endpoint,
    WgDeviceConfig,
    WgPeerConfig,
    WgPeerState,
    WgState,
    device_update,
    diff_peers,
    kicks_for,
)
from tests import builders

NOW = 1_000.0  # UNIX seconds for diff_peers: no handshake in these tests is fresh

# -- the key file ------------------------------------------------------------------------


def test_rotate_replaces_the_key_file_atomically_0600(tmp_path: Path) -> None:
    old = NodeKey.load_or_create(tmp_path)
    path = tmp_path / KEY_FILE
    reader = path.open()  # a reader that opened the old file keeps reading the old key
    inode = path.stat().st_ino
    previous_umask = os.umask(0)
    try:
        new = old.rotate()
    finally:
        os.umask(previous_umask)
    assert new.public != old.public and new.path == path
    assert PrivateKey.from_base64(reader.read()) == old.private
    reader.close()
    assert path.stat().st_ino != inode  # renamed over, not rewritten in place
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE]  # no temporary file left
    assert NodeKey.load_or_create(tmp_path).public == new.public


def test_rotate_failure_leaves_the_old_key(tmp_path: Path) -> None:
    old = NodeKey.load_or_create(tmp_path)
    (tmp_path / f".{KEY_FILE}.{os.getpid()}.tmp").mkdir()  # the temporary file cannot be made
    with pytest.raises(NodeKeyError, match="cannot write node key"):
        old.rotate()
    assert NodeKey.load_or_create(tmp_path).public == old.public


# -- the request -------------------------------------------------------------------------


def test_request_key_and_value() -> None:
    assert (
        StoreKeys("/overlayd/network").control("a1", VERB)
        == "/overlayd/network/control/a1/rotate-key"
    )
    value = encode_request("ops-host", 1_800_000_000.25)
    assert json.loads(value) == {"By": "ops-host", "RequestedAt": 1_800_000_000.25}
    assert describe_request(value) == "requested by 'ops-host' at 2027-01-15T08:00:00Z"


def test_any_value_is_described_short() -> None:
    huge = "x" * 1_000_000
    assert len(describe_request(huge)) < 120
    assert len(describe_request(json.dumps({"By": huge, "RequestedAt": 1}))) < 140
    assert describe_request('{"By": "h", "RequestedAt": 1e300}').startswith("requested by 'h'")
    assert describe_request("") == "request ''"


def test_key_change_line_shows_only_short_public_keys() -> None:
    a, b = PrivateKey.generate().public_key(), PrivateKey.generate().public_key()
    old = lease("a1", a)
    assert key_change(old, replace(old, public_key=b.base64)) == (
        f"peer 'a1' (10.244.1.0/24) has a new public key {short(b)} (was {short(a)})"
    )
    assert key_change(old, old) is None
    assert key_change(None, old) is None
    assert key_change(old, replace(old, node="other", public_key=b.base64)) is None


def lease(node: str, key: PublicKey) -> LeaseRecord:
    return builders.lease(
        "10.244.1.0/24",
        "192.0.2.1",
        node=node,
        node_id="0" * 32,
        vtep_mac="6a:0c:2f:9e:41:d3",
        public_key=key.base64,
    )


# -- serving requests --------------------------------------------------------------------


class FakeControl:
    """The control keys of one node, in memory; ``watch_control`` replays ``values``."""

    def __init__(self, values: list[ControlValue | None] | None = None) -> None:
        self.values: list[ControlValue | None] = values or []
        self.current: ControlValue | None = self.values[-1] if self.values else None
        self.deleted: list[int] = []
        self.fail_watch = 0

    async def watch_control(self, node: str, verb: str) -> AsyncIterator[ControlValue | None]:
        assert verb == VERB
        if self.fail_watch:
            self.fail_watch -= 1
            raise StoreError("etcd watch failed: UNAVAILABLE")
        for value in self.values:
            yield value

    async def get_control(self, node: str, verb: str) -> ControlValue | None:
        return self.current

    async def put_control(self, node: str, verb: str, value: str) -> None:
        revision = self.current.mod_revision + 1 if self.current is not None else 1
        self.current = ControlValue(revision, value)

    async def delete_control(self, node: str, verb: str, mod_revision: int) -> bool:
        if self.current is None or self.current.mod_revision != mod_revision:
            return False
        self.deleted.append(mod_revision)
        self.current = None
        return True


REQUEST = ControlValue(7, encode_request("ops", 1_800_000_000))


def test_request_is_served_once_and_acknowledged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FakeControl([REQUEST])
    woken: list[bool] = []
    rotation = KeyRotation(store, "a1", lambda: woken.append(True))
    key = NodeKey.load_or_create(tmp_path)
    assert not rotation.due
    rotation.seen(REQUEST)
    assert rotation.due and woken == [True]
    new = rotation.rotate(key)
    assert new is not None and new.public != key.public
    assert not rotation.due  # the same request is not served twice
    with caplog.at_level(logging.INFO, logger="overlayd.rotation"):
        asyncio.run(rotation.acknowledge(key.public))  # the lease still shows the old key
        assert store.deleted == []
        asyncio.run(rotation.acknowledge(new.public))
    assert store.deleted == [7]
    # only the rotation's own lines: other tests may have set the root logger to INFO
    lines = [r.getMessage() for r in caplog.records if r.name == "overlayd.rotation"]
    assert lines == [
        f"node key rotated: public key {short(new.public)} replaces {short(key.public)}; "
        "lease republished (requested by 'ops' at 2027-01-15T08:00:00Z)"
    ]
    assert new.private.reveal_base64() not in caplog.text
    assert key.private.reveal_base64() not in caplog.text
    rotation.seen(None)  # our own delete, seen by the watch
    assert not rotation.due


def test_newer_request_during_a_rotation_is_served_next(tmp_path: Path) -> None:
    store = FakeControl()
    rotation = KeyRotation(store, "a1", lambda: None)
    key = NodeKey.load_or_create(tmp_path)
    rotation.seen(REQUEST)
    first = rotation.rotate(key)
    assert first is not None
    newer = ControlValue(9, encode_request("ops", 1_800_000_100))
    store.current = newer
    rotation.seen(newer)
    assert rotation.due
    second = rotation.rotate(first)
    assert second is not None
    asyncio.run(rotation.acknowledge(second.public))
    assert store.deleted == [9]  # one publication serves both; the delete names the newer one
    assert not rotation.due


def test_request_written_between_rotate_and_ack_stays(tmp_path: Path) -> None:
    store = FakeControl()
    rotation = KeyRotation(store, "a1", lambda: None)
    rotation.seen(REQUEST)
    new = rotation.rotate(NodeKey.load_or_create(tmp_path))
    assert new is not None
    store.current = ControlValue(12, "{}")  # not yet seen by the watch
    asyncio.run(rotation.acknowledge(new.public))
    assert store.deleted == [] and store.current is not None  # the compare kept it
    rotation.seen(store.current)
    assert rotation.due


def test_failed_rotation_is_logged_once_and_not_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rotation = KeyRotation(FakeControl(), "a1", lambda: None)
    key = NodeKey.load_or_create(tmp_path)
    (tmp_path / f".{KEY_FILE}.{os.getpid()}.tmp").mkdir()
    rotation.seen(REQUEST)
    with caplog.at_level(logging.ERROR, logger="overlayd.rotation"):
        assert rotation.rotate(key) is None
    ours = [r for r in caplog.records if r.name == "overlayd.rotation"]
    assert len(ours) == 1 and "keeping the current key" in caplog.text
    assert not rotation.due
    asyncio.run(rotation.acknowledge(key.public))  # nothing to acknowledge
    rotation.seen(ControlValue(8, "{}"))  # written again: tried again
    assert rotation.due


def test_watch_serves_a_request_left_while_down_and_survives_store_errors() -> None:
    store = FakeControl([REQUEST])
    store.fail_watch = 1
    woken: list[bool] = []
    rotation = KeyRotation(store, "a1", lambda: woken.append(True))

    async def run() -> None:
        task = asyncio.create_task(rotation.watch())
        for _ in range(100):
            if woken:
                break
            await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(run())
    assert woken and rotation.due


# -- the prober ----------------------------------------------------------------------------


class Transport(asyncio.DatagramTransport):
    """A UDP transport that records what is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        self.sent.append((bytes(data), addr))


def test_prober_answers_only_the_new_key() -> None:
    old, new, peer = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
    prober: Prober[str] = Prober(old)
    transport = Transport()
    prober.connection_made(transport)
    prober.set_peers({"p": PeerTarget(peer.public_key(), (IPv4Address("192.0.2.9"),))})
    them = ProbeCodec(peer)
    source = ("192.0.2.9", 8473)
    prober.datagram_received(them.encode_probe(old.public_key())[1], source)
    assert len(transport.sent) == 1
    prober.set_key(new)
    prober.datagram_received(them.encode_probe(old.public_key())[1], source)
    assert len(transport.sent) == 1 and prober.counters.rejected[Reject.RECIPIENT] == 1
    prober.datagram_received(them.encode_probe(new.public_key())[1], source)
    assert len(transport.sent) == 2
    reply = them.decode(transport.sent[1][0], known=lambda k: True, expects_reply=lambda k, n: True)
    assert reply.sender == new.public_key()


# -- WireGuard -----------------------------------------------------------------------------


def test_peer_diff_for_a_changed_public_key() -> None:
    old, new, other = (PrivateKey.generate().public_key() for _ in range(3))
    endpoint = Endpoint(IPv4Address("198.51.100.11"), 51820)
    before = WgPeerConfig(old, endpoint, (IPv4Network("10.244.1.0/24"),), 25)
    untouched = WgPeerConfig(other, Endpoint(IPv4Address("192.0.2.31"), 51820))
    actual = {p.public_key: WgPeerState(p, last_handshake=1.0) for p in (before, untouched)}
    changes = diff_peers([replace(before, public_key=new), untouched], actual, now=NOW)
    assert changes.remove == (old,) and changes.update == ()
    assert changes.add == (replace(before, public_key=new),)  # same endpoint, allowed IPs
    text = uapi.encode_set(changes)
    assert text.index(f"public_key={old.hex}\nremove=true") < text.index(f"public_key={new.hex}")
    assert other.hex not in text  # per peer: the other peer's session is not touched
    assert "replace_peers" not in text
    assert "endpoint=198.51.100.11:51820" in text


def test_device_update_for_a_new_private_key() -> None:
    old, new = PrivateKey.generate(), PrivateKey.generate()
    state = WgState(old.public_key(), 51820, 0, {})
    assert not device_update(state, WgDeviceConfig(old))
    update = device_update(state, WgDeviceConfig(new))
    assert update == DeviceUpdate(private_key=new)
    assert new.reveal_hex() not in repr(update) and new.reveal_base64() not in repr(update)


def test_kernel_message_for_a_private_key_change() -> None:
    new = PrivateKey(bytes(range(1, 33)))
    raw = kernel.encode_device_update("ovwg12345678", DeviceUpdate(private_key=new))
    name = b"ovwg12345678\0"
    expected = (
        bytes([kernel.WG_CMD_SET_DEVICE, kernel.WG_GENL_VERSION, 0, 0])
        + nla(kernel.WGDEVICE_A_IFNAME, name)
        + nla(kernel.WGDEVICE_A_PRIVATE_KEY, new.raw)
    )
    # nothing else: no listen port, no fwmark, no flags (REPLACE_PEERS), no peers
    assert raw == expected


def test_uapi_request_for_a_private_key_change() -> None:
    new = PrivateKey(bytes(range(1, 33)))
    assert uapi.encode_device_update(DeviceUpdate(private_key=new)) == (
        f"set=1\nprivate_key={new.raw.hex()}\n\n"
    )


def _peers(*intervals: int) -> dict[PublicKey, WgPeerState]:
    keys = [PublicKey(bytes([n]) * 32) for n in range(len(intervals), 0, -1)]  # unsorted
    return {
        k: WgPeerState(WgPeerConfig(k, persistent_keepalive=i))
        for k, i in zip(keys, intervals, strict=True)
    }


def test_a_new_private_key_kicks_every_peers_keepalive_off_and_on() -> None:
    old, new = PrivateKey.generate(), PrivateKey.generate()
    peers = _peers(25, 0)
    low, high = sorted(peers, key=lambda k: k.raw)
    update = device_update(WgState(old.public_key(), 51820, 0, peers), WgDeviceConfig(new))
    # 25 -> 0 -> 25 sends a keepalive; a peer without keepalive gets 1 s, then 0 again
    assert update.kicks == ((low, 1), (low, 0), (high, 0), (high, 25))
    assert kicks_for({}) == ()
    fresh = WgState(None, 51820, 0, peers)  # a device being set up: no sessions to redo
    assert device_update(fresh, WgDeviceConfig(new)).kicks == ()
    same = WgState(old.public_key(), 51820, 0, peers)
    assert not device_update(same, WgDeviceConfig(old))


def test_uapi_request_for_a_key_change_with_kicks() -> None:
    new, peer = PrivateKey(bytes(range(1, 33))), PublicKey(bytes([7]) * 32)
    text = uapi.encode_device_update(DeviceUpdate(new, kicks=((peer, 0), (peer, 25))))
    block = f"public_key={peer.hex}\nupdate_only=true\npersistent_keepalive_interval="
    assert text == f"set=1\nprivate_key={new.raw.hex()}\n{block}0\n{block}25\n\n"


def test_kernel_message_for_a_key_change_with_kicks() -> None:
    new, peer = PrivateKey(bytes(range(1, 33))), PublicKey(bytes([7]) * 32)
    raw = kernel.encode_device_update("ovwg12345678", DeviceUpdate(new, kicks=((peer, 25),)))
    entry = nla(
        0 | 0x8000,  # NLA_F_NESTED
        nla(kernel.WGPEER_A_PUBLIC_KEY, peer.raw)
        + nla(kernel.WGPEER_A_FLAGS, struct.pack("=I", kernel.WGPEER_F_UPDATE_ONLY))
        + nla(kernel.WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, struct.pack("=H", 25)),
    )
    # the key first, then the kick: the peer entry alone, update only (no allowed IPs)
    assert raw.endswith(
        nla(kernel.WGDEVICE_A_PRIVATE_KEY, new.raw) + nla(kernel.WGDEVICE_A_PEERS | 0x8000, entry)
    )


def nla(kind: int, payload: bytes) -> bytes:
    """An attribute written out by hand: u16 len, u16 type, payload, pad to 4."""
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)
