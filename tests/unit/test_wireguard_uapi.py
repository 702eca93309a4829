"""UAPI text protocol: request encoding, response parsing, client I/O against a fake server."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from overlayd.dataplane.wireguard.uapi import (
    UapiClient,
    UapiUnavailable,
    encode_set,
    parse_get,
    socket_path,
)
from overlayd.values.errors import WireGuardError
from overlayd.values.keys import PrivateKey, PublicKey
from overlayd.values.wireguard import Endpoint, PeerChanges, PresharedKey, WgPeerConfig

PRIV = PrivateKey(bytes(range(1, 33)))
K1 = PublicKey(b"\x11" * 32)
K2 = PublicKey(b"\x22" * 32)
K3 = PublicKey(b"\x33" * 32)
PSK = PresharedKey(b"\x44" * 32)

# the shape wireguard-go answers a get=1 with (device/uapi.go IpcGetOperation)
GET_RESPONSE = (
    f"private_key={PRIV.reveal_hex()}\n"
    "listen_port=51820\n"
    "fwmark=7\n"
    f"public_key={K1.hex}\n"
    f"preshared_key={'00' * 32}\n"
    "protocol_version=1\n"
    "endpoint=192.0.2.1:51820\n"
    "last_handshake_time_sec=1700000000\n"
    "last_handshake_time_nsec=500000000\n"
    "tx_bytes=1000\n"
    "rx_bytes=2000\n"
    "persistent_keepalive_interval=25\n"
    "allowed_ip=10.244.1.0/24\n"
    "allowed_ip=10.244.0.1/32\n"
    f"public_key={K2.hex}\n"
    f"preshared_key={'44' * 32}\n"
    "protocol_version=1\n"
    "last_handshake_time_sec=0\n"
    "last_handshake_time_nsec=0\n"
    "tx_bytes=0\n"
    "rx_bytes=0\n"
    "persistent_keepalive_interval=0\n"
    "allowed_ip=::/0\n"
    "errno=0\n"
    "\n"
)


def test_parse_get() -> None:
    state = parse_get(GET_RESPONSE)
    assert state.public_key == PRIV.public_key()
    assert (state.listen_port, state.fwmark) == (51820, 7)
    assert list(state.peers) == [K1, K2]
    p1 = state.peers[K1]
    assert p1.config == WgPeerConfig(
        K1,
        Endpoint(IPv4Address("192.0.2.1"), 51820),
        (IPv4Network("10.244.0.1/32"), IPv4Network("10.244.1.0/24")),
        25,
        None,
    )
    assert p1.last_handshake == pytest.approx(1700000000.5)
    assert (p1.rx_bytes, p1.tx_bytes) == (2000, 1000)
    p2 = state.peers[K2]
    assert p2.config.endpoint is None
    assert p2.config.preshared_key == PSK
    assert p2.last_handshake is None
    assert p2.foreign_allowed_ips == ("::/0",)


def test_parse_get_of_fresh_device() -> None:
    state = parse_get("errno=0\n\n")
    assert state.public_key is None and state.listen_port == 0 and not state.peers


def test_parse_ipv6_endpoint_is_none() -> None:
    text = f"public_key={K1.hex}\nendpoint=[2001:db8::1]:51820\nerrno=0\n\n"
    assert parse_get(text).peers[K1].config.endpoint is None


def test_parse_errors() -> None:
    with pytest.raises(WireGuardError, match="errno -22"):
        parse_get("errno=-22\n\n")
    with pytest.raises(WireGuardError, match="malformed UAPI line"):
        parse_get("garbage\n\n")
    with pytest.raises(WireGuardError, match="'public_key'"):
        parse_get("public_key=zz\n\n")


def test_parse_error_never_echoes_a_secret() -> None:
    secret = "ab" * 31 + "z"  # a malformed private key
    with pytest.raises(WireGuardError) as info:
        parse_get(f"private_key={secret}\n\n")
    assert secret not in str(info.value)


def test_encode_set_per_peer() -> None:
    changes = PeerChanges(
        add=(WgPeerConfig(K3, None, (IPv4Network("10.244.3.0/24"),), 25, PSK),),
        update=(
            WgPeerConfig(
                K2, Endpoint(IPv4Address("192.0.2.2"), 51821), (IPv4Network("10.244.2.0/24"),)
            ),
        ),
        remove=(K1,),
    )
    assert encode_set(changes) == (
        "set=1\n"
        f"public_key={K1.hex}\nremove=true\n"
        f"public_key={K2.hex}\nupdate_only=true\n"
        f"preshared_key={'00' * 32}\n"
        "endpoint=192.0.2.2:51821\n"
        "persistent_keepalive_interval=0\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=10.244.2.0/24\n"
        f"public_key={K3.hex}\n"
        f"preshared_key={'44' * 32}\n"
        "persistent_keepalive_interval=25\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=10.244.3.0/24\n"
        "\n"
    )


def test_encode_set_device_fields_and_never_replace_peers() -> None:
    text = encode_set(PeerChanges(), private_key=PRIV, listen_port=51821, fwmark=0)
    assert text == f"set=1\nprivate_key={PRIV.reveal_hex()}\nlisten_port=51821\nfwmark=0\n\n"
    assert "replace_peers" not in encode_set(PeerChanges(remove=(K1,)))


def test_socket_path() -> None:
    assert socket_path("ovwg12345678") == Path("/var/run/wireguard/ovwg12345678.sock")


@pytest.fixture
def fake_server(tmp_path: Path) -> Iterator[Callable[[Callable[[str], bytes]], Path]]:
    """Start a one-thread UAPI server answering each request with ``reply(request)``."""
    servers: list[socket.socket] = []

    def start(reply: Callable[[str], bytes]) -> Path:
        path = tmp_path / f"fake{len(servers)}.sock"
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        server.listen()
        servers.append(server)

        def serve() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                with conn:
                    data = b""
                    while not data.endswith(b"\n\n"):
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    with contextlib.suppress(OSError):  # server_pid() sends nothing
                        conn.sendall(reply(data.decode()))

        threading.Thread(target=serve, daemon=True).start()
        return path

    yield start
    for server in servers:
        server.close()


def test_client_get_and_set(fake_server: Callable[[Callable[[str], bytes]], Path]) -> None:
    seen: list[str] = []

    def reply(request: str) -> bytes:
        seen.append(request)
        return GET_RESPONSE.encode() if request == "get=1\n\n" else b"errno=0\n\n"

    client = UapiClient(fake_server(reply))
    assert set(client.get().peers) == {K1, K2}
    request = encode_set(PeerChanges(remove=(K1,)))
    client.set(request)
    assert seen == ["get=1\n\n", request]
    assert client.server_pid() == os.getpid()


def test_client_set_rejected(fake_server: Callable[[Callable[[str], bytes]], Path]) -> None:
    client = UapiClient(fake_server(lambda _: b"errno=-98\n\n"))
    with pytest.raises(WireGuardError, match=r"errno -98 \(Address already in use\)"):
        client.set(encode_set(PeerChanges(), listen_port=1))


def test_client_truncated_answer(fake_server: Callable[[Callable[[str], bytes]], Path]) -> None:
    client = UapiClient(fake_server(lambda _: b"private_key=00"))
    with pytest.raises(WireGuardError, match="closed mid-answer"):
        client.get()


def test_client_unavailable(tmp_path: Path) -> None:
    with pytest.raises(UapiUnavailable, match="no wireguard-go"):
        UapiClient(tmp_path / "missing.sock").get()
    stale = tmp_path / "stale.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(stale))
    sock.close()  # the path exists but nobody listens, as after a crash
    with pytest.raises(UapiUnavailable):
        UapiClient(stale).get()


def test_encode_set_restart_removes_then_creates_the_peer() -> None:
    """A restarted peer (issue 12: endpoint learned while it has no session) is removed
    with the removals and created, without update_only, with the additions."""
    peer = WgPeerConfig(K2, Endpoint(IPv4Address("192.0.2.31"), 51820), (), 25)
    text = encode_set(PeerChanges(remove=(K1,), restart=(peer,)))
    lines = text.splitlines()
    assert lines[:5] == [
        "set=1",
        f"public_key={K1.hex}",
        "remove=true",
        f"public_key={K2.hex}",
        "remove=true",
    ]
    assert lines[5] == f"public_key={K2.hex}" and "update_only=true" not in lines
    assert "endpoint=192.0.2.31:51820" in lines and "persistent_keepalive_interval=25" in lines
