"""MAC addresses and the diff between desired and actual kernel state."""

from __future__ import annotations

import copy
import random
from ipaddress import IPv4Address, IPv4Network

import pytest

from overlayd.values.kernel_state import (
    Changes,
    FdbEntry,
    KernelState,
    MacAddress,
    NeighEntry,
    RouteEntry,
    diff,
)

# -- MacAddress -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("0a:1b:2c:3d:4e:5f", "0a:1b:2c:3d:4e:5f"),
        ("0A:1B:2C:3D:4E:5F", "0a:1b:2c:3d:4e:5f"),
        ("0a-1b-2c-3d-4e-5f", "0a:1b:2c:3d:4e:5f"),
        ("  ff:FF:ff:00:00:01\n", "ff:ff:ff:00:00:01"),
    ],
)
def test_mac_parse_normalises(text: str, normal: str) -> None:
    mac = MacAddress.parse(text)
    assert mac.text == normal
    assert str(mac) == normal
    assert mac == MacAddress(normal)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0a:1b:2c:3d:4e",
        "0a:1b:2c:3d:4e:5f:60",
        "0a1b2c3d4e5f",
        "0a:1b:2c:3d:4e:5g",
        "a:1b:2c:3d:4e:5f",
        "0a:1b:2c:3d:4e:5f ",
        "0a.1b.2c.3d.4e.5f",
    ],
)
def test_mac_invalid(text: str) -> None:
    with pytest.raises(ValueError, match="invalid MAC"):
        if text.endswith(" "):
            MacAddress(text)  # the constructor does not strip
        else:
            MacAddress.parse(text)


def test_mac_constructor_requires_normal_form() -> None:
    with pytest.raises(ValueError):
        MacAddress("0A:1B:2C:3D:4E:5F")


def test_mac_bytes_round_trip() -> None:
    raw = bytes([0x02, 0xAB, 0x00, 0x10, 0xFF, 0x7E])
    mac = MacAddress.from_bytes(raw)
    assert mac.text == "02:ab:00:10:ff:7e"
    assert mac.packed == raw
    for bad in (b"", b"\x00" * 5, b"\x00" * 7):
        with pytest.raises(ValueError, match="6 bytes"):
            MacAddress.from_bytes(bad)


def test_mac_ordering_and_hash() -> None:
    a, b = MacAddress("02:00:00:00:00:01"), MacAddress("02:00:00:00:00:02")
    assert a < b
    assert len({a, MacAddress.parse("02-00-00-00-00-01"), b}) == 2


# -- diff -----------------------------------------------------------------------------


def mac(n: int) -> MacAddress:
    return MacAddress.from_bytes(bytes([2, 0, 0, 0, n >> 8, n & 0xFF]))


def peer(n: int, underlay: str = "192.0.2.1") -> tuple[RouteEntry, NeighEntry, FdbEntry]:
    subnet = IPv4Network(f"10.244.{n}.0/24")
    return (
        RouteEntry(subnet, subnet.network_address),
        NeighEntry(subnet.network_address, mac(n)),
        FdbEntry(mac(n), IPv4Address(underlay)),
    )


def state(*peers: tuple[RouteEntry, NeighEntry, FdbEntry]) -> KernelState:
    return KernelState.of(
        routes=[p[0] for p in peers], neighs=[p[1] for p in peers], fdbs=[p[2] for p in peers]
    )


def test_of_keys_entries_like_the_kernel() -> None:
    r, n, f = peer(3)
    s = state(peer(3))
    assert s.routes == {r.dst: r}
    assert s.neighs == {n.ip: n}
    assert s.fdbs == {f.mac: f}
    assert s.size() == 3


def test_diff_equal_states_is_empty() -> None:
    desired = state(peer(1), peer(2))
    actual = state(peer(1), peer(2))  # equal values, different objects
    changes = diff(desired, actual)
    assert len(changes) == 0
    assert changes == Changes()


def test_diff_adds_everything_into_empty() -> None:
    desired = state(peer(2), peer(1))
    changes = diff(desired, KernelState())
    assert changes.set_routes == (peer(1)[0], peer(2)[0])
    assert changes.set_neighs == (peer(1)[1], peer(2)[1])
    assert changes.set_fdbs == (peer(1)[2], peer(2)[2])
    assert not (changes.del_routes or changes.del_neighs or changes.del_fdbs)
    assert len(changes) == 6
    assert changes.summary() == "+2/-0 routes, +2/-0 neigh, +2/-0 fdb"


def test_diff_deletes_what_is_not_desired() -> None:
    changes = diff(state(peer(1)), state(peer(1), peer(2), peer(3)))
    assert changes.del_routes == (peer(2)[0], peer(3)[0])
    assert changes.del_neighs == (peer(2)[1], peer(3)[1])
    assert changes.del_fdbs == (peer(2)[2], peer(3)[2])
    assert not (changes.set_routes or changes.set_neighs or changes.set_fdbs)
    assert changes.summary() == "+0/-2 routes, +0/-2 neigh, +0/-2 fdb"


def test_diff_changed_value_is_one_replace_not_delete_plus_add() -> None:
    # the peer's underlay moved: same FDB key (MAC), new value
    changes = diff(state(peer(1, "198.51.100.9")), state(peer(1, "192.0.2.1")))
    assert changes.set_fdbs == (FdbEntry(mac(1), IPv4Address("198.51.100.9")),)
    assert changes.del_fdbs == ()
    assert len(changes) == 1
    # a neighbour whose MAC changed: replaced by key (IP); the old FDB (by MAC) is deleted
    r, _, f = peer(1)
    new_neigh = NeighEntry(IPv4Address("10.244.1.0"), mac(99))
    new_fdb = FdbEntry(mac(99), f.dst)
    changes = diff(state((r, new_neigh, new_fdb)), state(peer(1)))
    assert changes.set_neighs == (new_neigh,)
    assert changes.del_neighs == ()
    assert changes.set_fdbs == (new_fdb,)
    assert changes.del_fdbs == (f,)
    assert changes.set_routes == () and changes.del_routes == ()


def test_diff_allow_delete_false_keeps_unknown_entries() -> None:
    desired = state(peer(1, "198.51.100.1"), peer(4))
    actual = state(peer(1), peer(2), peer(3))
    full = diff(desired, actual)
    safe = diff(desired, actual, allow_delete=False)
    assert safe.set_routes == full.set_routes and safe.set_fdbs == full.set_fdbs
    assert safe.set_neighs == full.set_neighs
    assert full.del_routes and full.del_neighs and full.del_fdbs
    assert safe.del_routes == ()
    assert safe.del_neighs == ()
    assert safe.del_fdbs == ()


def test_diff_outputs_are_sorted_whatever_the_insertion_order() -> None:
    peers = [peer(n, f"192.0.2.{n}") for n in range(1, 60)]
    old = [peer(n) for n in range(100, 140)]
    rng = random.Random(5)
    results = set()
    for _ in range(5):
        rng.shuffle(peers)
        rng.shuffle(old)
        changes = diff(state(*peers), state(*old))
        for group in (changes.set_routes, changes.set_fdbs, changes.del_neighs):
            assert list(group) == sorted(group)
        results.add(changes)
    assert len(results) == 1


def test_identity_shortcut_same_result_as_equality() -> None:
    peers = [peer(n, f"192.0.2.{n % 7 + 1}") for n in range(1, 40)]
    desired = state(*peers)
    # actual shares some of the very objects, holds equal copies of others, and differs
    shared = peers[:10]
    copies = [copy.deepcopy(p) for p in peers[10:30]]
    changed = [peer(n, "203.0.113.1") for n in range(30, 40)]
    extra = [peer(n) for n in range(200, 205)]
    actual = state(*shared, *copies, *changed, *extra)
    assert actual.routes[peers[15][0].dst] is not peers[15][0]
    by_identity = diff(desired, actual)
    # reference: a state built only of fresh equal copies (no identity hits possible)
    by_equality = diff(copy.deepcopy(desired), copy.deepcopy(actual))
    assert by_identity == by_equality
    # only the FDBs of the changed peers differ; the extras are deleted
    assert [f.mac for f in by_identity.set_fdbs] == [mac(n) for n in range(30, 40)]
    assert by_identity.set_routes == () and by_identity.set_neighs == ()
    assert len(by_identity.del_routes) == len(extra)
