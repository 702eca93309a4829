"""WireGuard model: values, device naming, per-peer diff."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from overlayd.values.keys import PrivateKey, PublicKey
from overlayd.values.wireguard import (
    Endpoint,
    PeerChanges,
    PresharedKey,
    WgDeviceConfig,
    WgPeerConfig,
    WgPeerState,
    diff_peers,
    interface_name,
)

NOW = 1_000.0  # UNIX seconds for diff_peers: no handshake in these tests is fresh


def key(n: int) -> PublicKey:
    return PublicKey(bytes([n]) * 32)


def peer(n: int, **kwargs: Any) -> WgPeerConfig:
    defaults: dict[str, Any] = {
        "endpoint": Endpoint(IPv4Address(f"192.0.2.{n}"), 51820),
        "allowed_ips": (IPv4Network(f"10.244.{n}.0/24"),),
        "persistent_keepalive": 0,
    }
    defaults.update(kwargs)
    return WgPeerConfig(key(n), **defaults)


def actual(*configs: WgPeerConfig) -> dict[PublicKey, WgPeerState]:
    return {c.public_key: WgPeerState(c, last_handshake=1.0) for c in configs}


def test_interface_name_is_short_stable_and_distinct() -> None:
    a = interface_name("node-a")
    assert a == interface_name("node-a")
    assert a.startswith("ovwg") and len(a) == 12 <= 15
    assert a != interface_name("node-b")


def test_allowed_ips_normalised() -> None:
    nets = (IPv4Network("10.0.2.0/24"), IPv4Network("10.0.1.0/24"), IPv4Network("10.0.2.0/24"))
    assert peer(1, allowed_ips=nets).allowed_ips == (
        IPv4Network("10.0.1.0/24"),
        IPv4Network("10.0.2.0/24"),
    )


def test_value_checks() -> None:
    with pytest.raises(ValueError):
        Endpoint(IPv4Address("192.0.2.1"), 0)
    with pytest.raises(ValueError):
        peer(1, persistent_keepalive=70000)
    with pytest.raises(ValueError):
        WgDeviceConfig(PrivateKey.generate(), listen_port=0)
    with pytest.raises(ValueError):
        PresharedKey(b"x")
    assert Endpoint.parse("192.0.2.1:51820") == Endpoint(IPv4Address("192.0.2.1"), 51820)
    for bad in ("192.0.2.1", "[2001:db8::1]:51820", "192.0.2.1:x"):
        with pytest.raises(ValueError):
            Endpoint.parse(bad)


def test_secrets_not_in_repr() -> None:
    psk = PresharedKey(b"\x07" * 32)
    private = PrivateKey(b"\x09" * 32)
    text = repr(peer(1, preshared_key=psk)) + repr(WgDeviceConfig(private)) + str(psk)
    assert "\\x07" not in text and "\\x09" not in text
    assert private.reveal_hex() not in text


def test_diff_adds_updates_removes_sorted() -> None:
    desired = [peer(3), peer(1), peer(2, persistent_keepalive=25)]
    changes = diff_peers(desired, actual(peer(2), peer(4), peer(5)), now=NOW)
    assert changes.add == (peer(1), peer(3))
    assert changes.update == (peer(2, persistent_keepalive=25),)
    assert changes.remove == (key(4), key(5))
    assert len(changes) == 5
    assert changes.summary() == "+2 ~1 -2 wireguard peers"


def test_adding_a_peer_touches_no_other_peer() -> None:
    existing = [peer(1), peer(2)]
    changes = diff_peers([*existing, peer(3)], actual(*existing), now=NOW)
    assert changes == PeerChanges(add=(peer(3),))


def test_removing_a_peer_touches_no_other_peer() -> None:
    changes = diff_peers([peer(1)], actual(peer(1), peer(2)), now=NOW)
    assert changes == PeerChanges(remove=(key(2),))


def test_no_deletes_before_first_snapshot() -> None:
    changes = diff_peers([peer(1)], actual(peer(2)), allow_delete=False, now=NOW)
    assert changes == PeerChanges(add=(peer(1),))


def test_learned_endpoint_is_not_a_change() -> None:
    desired = peer(1, endpoint=None, persistent_keepalive=0)
    learned = peer(1, endpoint=Endpoint(IPv4Address("203.0.113.9"), 40000))
    assert not diff_peers([desired], actual(learned), now=NOW)


def test_port_learned_behind_nat_is_kept_while_the_session_is_fresh() -> None:
    published = peer(1, endpoint=Endpoint(IPv4Address("203.0.113.2"), 51820))
    learned = WgPeerState(
        peer(1, endpoint=Endpoint(IPv4Address("203.0.113.2"), 29546)), last_handshake=1000.0
    )
    assert not diff_peers([published], {key(1): learned}, now=1100.0)
    # stale session: the published endpoint is tried again, on a fresh peer (no session
    # to keep, and a fresh peer sends its handshake at once)
    assert diff_peers([published], {key(1): learned}, now=1200.0).restart == (published,)
    # another address is a path change, applied at once
    moved = peer(1, endpoint=Endpoint(IPv4Address("198.51.100.7"), 51820))
    assert diff_peers([moved], {key(1): learned}, now=1100.0).update == (moved,)
    # other fields still update, keeping the learned endpoint
    more = replace(published, persistent_keepalive=5)
    (sent,) = diff_peers([more], {key(1): learned}, now=1100.0).update
    assert sent.endpoint == learned.config.endpoint and sent.persistent_keepalive == 5


def test_changed_fields_are_updates() -> None:
    base = peer(1)
    live = {key(1): WgPeerState(base, last_handshake=NOW - 10)}
    moved = peer(1, endpoint=Endpoint(IPv4Address("192.0.2.99"), 51820))
    # a session to keep: a new address is updated in place (a new port of the same
    # address is what a NAT learned: kept, test_port_learned_behind_nat_…)
    assert diff_peers([moved], live, now=NOW).update == (moved,)
    variants = [
        peer(1, allowed_ips=(IPv4Network("10.244.1.0/24"), IPv4Network("10.244.99.1/32"))),
        peer(1, allowed_ips=()),
        peer(1, persistent_keepalive=5),
        peer(1, preshared_key=PresharedKey(b"\x01" * 32)),
    ]
    for variant in variants:
        assert diff_peers([variant], actual(base), now=NOW).update == (variant,)
    assert not diff_peers([base], actual(base), now=NOW)


def test_foreign_allowed_ips_force_an_update() -> None:
    state = {key(1): WgPeerState(peer(1), foreign_allowed_ips=("::/0",))}
    assert diff_peers([peer(1)], state, now=NOW).update == (peer(1),)


def test_duplicate_desired_key_is_an_error() -> None:
    with pytest.raises(ValueError, match="twice"):
        diff_peers([peer(1), peer(1, persistent_keepalive=5)], {}, now=NOW)


def test_a_new_endpoint_without_a_session_restarts_the_peer() -> None:
    """Issue 12: WireGuard holds a failed handshake attempt (traffic sent while the peer
    had no endpoint) for 5 s; an endpoint set then waits for that retry. Without a session
    to keep, the peer is created anew, which sends its handshake at once."""
    dialled_in = peer(1, endpoint=None)
    verified = peer(1, endpoint=Endpoint(IPv4Address("192.0.2.31"), 51820))
    never = {key(1): WgPeerState(dialled_in)}
    changes = diff_peers([verified], never, now=NOW)
    assert changes == PeerChanges(restart=(verified,))
    assert len(changes) == 1 and changes.summary() == "+0 ~1 -0 wireguard peers (1 restarted)"
    # the same endpoint: nothing to do; no endpoint wanted: nothing to restart for
    assert not diff_peers([verified], {key(1): WgPeerState(verified)}, now=NOW)
    assert not diff_peers([dialled_in], never, now=NOW)
    # a stale session restarts too; a live one is updated in place
    stale = {key(1): WgPeerState(dialled_in, last_handshake=NOW - 181)}
    assert diff_peers([verified], stale, now=NOW).restart == (verified,)
    live = {key(1): WgPeerState(dialled_in, last_handshake=NOW - 5)}
    assert diff_peers([verified], live, now=NOW).update == (verified,)
