"""Our WireGuard generic-netlink code against pyroute2's ``WireGuard`` support: why the
kernel driver (overlayd/dataplane/wireguard/kernel.py) keeps its own (issue 10). Needs no
WireGuard module: it encodes, decodes and times round trips to the ``nlctrl`` family.

  .venv/bin/python scripts/bench_wireguard_netlink.py

1. encode 1,000 peers as WG_CMD_SET_DEVICE: ours (64/message) vs pyroute2 (1/message, as
   WireGuard.set builds them)
2. decode a 1,000-peer GET_DEVICE dump: ours vs pyroute2's wgmsg parser
3. per-request round trip: one genl request/reply (CTRL_CMD_GETFAMILY nlctrl) through
   pyroute2's sync API vs our plain socket -- the shape of one WireGuard.set call
"""

from __future__ import annotations

import struct
import time
from base64 import b64encode
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
from pyroute2.netlink.generic import GenericNetlinkSocket
from pyroute2.netlink.generic.wireguard import AsyncWireGuard, wgmsg

from overlayd.dataplane.wireguard import genl, kernel
from overlayd.values.keys import PublicKey
from overlayd.values.wireguard import Endpoint, PeerChanges, PresharedKey, WgPeerConfig

N = 1000
peers = tuple(
    WgPeerConfig(
        PublicKey(struct.pack("=I", i + 1) * 8),
        Endpoint(IPv4Address(0xC6336400 + (i % 250) + 1), 51820),
        (IPv4Network((0x0AF40000 + (i << 8), 24)), IPv4Network((0x0AF40000 + (i << 8), 32))),
        25,
        PresharedKey(b"\x44" * 32),
    )
    for i in range(N)
)


def best(fn: Callable[[], object], rounds: int = 5) -> float:
    times: list[float] = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1000


class _Shim:  # what _wg_set_peer needs of its socket
    _wg_test_key = AsyncWireGuard._wg_test_key
    _wg_build_allowedips = AsyncWireGuard._wg_build_allowedips


def pyroute2_peer(p: WgPeerConfig) -> dict[str, Any]:
    assert p.preshared_key is not None
    d: dict[str, Any] = {
        "public_key": p.public_key.base64,
        "preshared_key": b64encode(p.preshared_key.raw).decode(),
        "persistent_keepalive": p.persistent_keepalive,
        "replace_allowed_ips": True,
        "allowed_ips": [str(n) for n in p.allowed_ips],
    }
    if p.endpoint:
        d["endpoint_addr"] = str(p.endpoint.address)
        d["endpoint_port"] = p.endpoint.port
    return d


def encode_pyroute2() -> list[bytes]:
    out: list[bytes] = []
    for p in peers:
        msg = wgmsg()
        msg["attrs"].append(["WGDEVICE_A_IFNAME", "wg0"])
        AsyncWireGuard._wg_set_peer(_Shim(), msg, pyroute2_peer(p))
        msg["cmd"] = kernel.WG_CMD_SET_DEVICE
        msg["version"] = 1
        msg["header"]["type"] = 30
        msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK
        msg.encode()
        out.append(msg.data)
    return out


def encode_ours() -> list[bytes]:
    return kernel.encode_set_messages("wg0", PeerChanges(add=peers))


ours = encode_ours()
print(
    f"encode {N} peers: ours {best(encode_ours):.1f} ms in {len(ours)} messages; "
    f"pyroute2 {best(encode_pyroute2):.1f} ms in {N} messages"
)

# a dump as the kernel would send it: the set payloads with GET_DEVICE command byte
dump_payloads = [bytes([0]) + m[1:] for m in ours]
dump_bytes = [struct.pack("=IHHII", 16 + len(p), 30, 2, 1, 0) + p for p in dump_payloads]


def decode_pyroute2() -> None:
    peers_seen = 0
    for raw in dump_bytes:
        msg = wgmsg(raw)
        msg.decode()
        for peer in msg.get_attr("WGDEVICE_A_PEERS") or []:
            peer.get_attr("WGPEER_A_PUBLIC_KEY")
            peer.get_attr("WGPEER_A_ENDPOINT")
            for ip in peer.get_attr("WGPEER_A_ALLOWEDIPS") or []:
                ip["addr"]
            peers_seen += 1
    assert peers_seen == N, peers_seen


def decode_ours() -> None:
    assert len(kernel.decode_device(dump_payloads).peers) == N


print(
    f"decode {N}-peer dump: ours {best(decode_ours):.1f} ms; "
    f"pyroute2 (parse only, no conversion) {best(decode_pyroute2):.1f} ms"
)

# round trips
g = GenericNetlinkSocket()


def rt_pyroute2() -> None:
    for _ in range(N):
        g.discovery("nlctrl")


nl = genl._Socket(5.0)
ctrl = genl.GenericNetlink("nlctrl")


def rt_ours() -> None:
    for _ in range(N):
        nl.request(genl.GENL_ID_CTRL, 1, genl.encode_get_family("nlctrl"))


def rt_ours_fresh() -> None:
    for _ in range(N):
        ctrl.send([genl.encode_get_family("nlctrl")])  # a socket per call, as the driver


def rt_pyroute2_fresh() -> None:
    for _ in range(N):
        with GenericNetlinkSocket() as s:
            s.discovery("nlctrl")


print(
    f"{N} genl request/reply round trips: ours {best(rt_ours, 3):.1f} ms (one socket), "
    f"{best(rt_ours_fresh, 3):.1f} ms (socket per request); pyroute2 sync API "
    f"{best(rt_pyroute2, 3):.1f} ms (one socket), {best(rt_pyroute2_fresh, 1):.1f} ms "
    "(socket per request)"
)
