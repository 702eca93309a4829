"""Network config parsing and validation (flannel's JSON format and defaults)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from overlayd.values.config import (
    DEFAULT_VNI,
    DEFAULT_VXLAN_PORT,
    BackendConfig,
    NetworkConfig,
    parse_config,
)
from overlayd.values.errors import ConfigError


def cfg(**fields: Any) -> NetworkConfig:
    return parse_config(json.dumps(fields))


# -- defaults -------------------------------------------------------------------------


def test_minimal_config_gets_flannel_defaults() -> None:
    c = cfg(Network="10.244.0.0/16")
    assert c.network == IPv4Network("10.244.0.0/16")
    assert c.subnet_len == 24
    # the first subnet is skipped, the last one is the max
    assert c.subnet_min == IPv4Address("10.244.1.0")
    assert c.subnet_max == IPv4Address("10.244.255.0")
    assert c.backend == BackendConfig(type="vxlan", vni=DEFAULT_VNI, port=DEFAULT_VXLAN_PORT)
    assert c.backend.vni == 1 and c.backend.port == 8472 and c.backend.mtu is None
    assert c.subnet_count() == 255


@pytest.mark.parametrize(
    ("network", "subnet_len"),
    [
        ("10.0.0.0/8", 24),
        ("10.244.0.0/16", 24),
        ("10.244.0.0/22", 24),  # /22 or larger: a /24 per host
        ("10.244.0.0/23", 25),  # smaller: split in four
        ("10.244.0.0/24", 26),
        ("10.244.0.0/28", 30),  # smallest usable
    ],
)
def test_default_subnet_len(network: str, subnet_len: int) -> None:
    c = cfg(Network=network)
    assert c.subnet_len == subnet_len
    size = 1 << (32 - subnet_len)
    net = IPv4Network(network)
    assert int(c.subnet_min) == int(net.network_address) + size
    assert int(c.subnet_max) == int(net.broadcast_address) + 1 - size
    assert c.subnet_count() == net.num_addresses // size - 1


@pytest.mark.parametrize(
    "network", ["10.244.0.0/29", "10.244.0.0/30", "10.244.0.1/32", "10.244.0.0"]
)
def test_network_too_small(network: str) -> None:
    with pytest.raises(ConfigError, match="too small"):
        cfg(Network=network)


def test_explicit_subnet_len_and_bounds() -> None:
    c = cfg(
        Network="10.10.0.0/16",
        SubnetLen=26,
        SubnetMin="10.10.4.0",
        SubnetMax="10.10.4.192",
    )
    assert c.subnet_len == 26
    assert c.subnet_count() == 4
    assert [c.subnet_at(i) for i in range(4)] == [
        IPv4Network(f"10.10.4.{n}/26") for n in (0, 64, 128, 192)
    ]


def test_subnet_min_equal_max_has_one_subnet() -> None:
    c = cfg(Network="10.1.0.0/26", SubnetLen=28, SubnetMin="10.1.0.32", SubnetMax="10.1.0.32")
    assert c.subnet_count() == 1
    assert c.subnet_at(0) == IPv4Network("10.1.0.32/28")


def test_empty_subnet_min_means_default() -> None:
    c = cfg(Network="10.244.0.0/16", SubnetMin="", SubnetMax="")
    assert c.subnet_min == IPv4Address("10.244.1.0")
    assert c.subnet_max == IPv4Address("10.244.255.0")


def test_flannel_config_with_extra_keys_is_accepted() -> None:
    text = json.dumps(
        {
            "Network": "10.5.0.0/16",
            "EnableIPv4": True,
            "IPv6Network": "fc00::/48",
            "Backend": {"Type": "VXLAN", "VNI": 4096, "Port": 4789, "DirectRouting": False},
        }
    )
    c = parse_config(text.encode())
    assert c.backend == BackendConfig(type="vxlan", vni=4096, port=4789, mtu=None)


def test_ipv6_only_is_refused() -> None:
    with pytest.raises(ConfigError, match="IPv6-only"):
        cfg(Network="10.5.0.0/16", EnableIPv6=True, EnableIPv4=False)


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "{", "Network=10.0.0.0/8", b"\xff\xfe\x00"])
def test_not_json(text: str | bytes) -> None:
    with pytest.raises(ConfigError, match="not JSON"):
        parse_config(text)


@pytest.mark.parametrize("text", ["[]", '"10.0.0.0/8"', "42", "null"])
def test_not_an_object(text: str) -> None:
    with pytest.raises(ConfigError, match="JSON object"):
        parse_config(text)


@pytest.mark.parametrize("fields", [{}, {"Network": ""}, {"Network": None}, {"Network": 10}])
def test_no_network(fields: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="no Network"):
        parse_config(json.dumps(fields))


@pytest.mark.parametrize("network", ["10.244.0.1/16", "300.0.0.0/8", "fc00::/48", "10.244.0.0/33"])
def test_invalid_network(network: str) -> None:
    with pytest.raises(ConfigError, match="not a valid IPv4 network"):
        cfg(Network=network)


@pytest.mark.parametrize(
    ("subnet_len", "match"),
    [
        (31, "at most 30"),
        (32, "at most 30"),
        (17, "at least /18"),  # the network must hold four subnets
        (16, "at least /18"),
        (8, "at least /18"),
        (-1, "at least /18"),
    ],
)
def test_subnet_len_out_of_range(subnet_len: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        cfg(Network="10.244.0.0/16", SubnetLen=subnet_len)


@pytest.mark.parametrize("value", ["24", 24.0, True, [24]])
def test_subnet_len_wrong_type(value: Any) -> None:
    with pytest.raises(ConfigError, match="SubnetLen must be an integer"):
        cfg(Network="10.244.0.0/16", SubnetLen=value)


def test_subnet_len_boundaries_accepted() -> None:
    assert cfg(Network="10.244.0.0/16", SubnetLen=18).subnet_count() == 3
    assert cfg(Network="10.244.0.0/16", SubnetLen=30).subnet_len == 30


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"SubnetMin": "10.244.1.1"}, "SubnetMin 10.244.1.1 is not on a /24 boundary"),
        ({"SubnetMax": "10.244.200.128"}, "SubnetMax 10.244.200.128 is not on a /24 boundary"),
        ({"SubnetMin": "10.243.255.0"}, "SubnetMin 10.243.255.0 is outside Network"),
        ({"SubnetMax": "10.245.0.0"}, "SubnetMax 10.245.0.0 is outside Network"),
        ({"SubnetMin": "10.244.9.0", "SubnetMax": "10.244.8.0"}, "SubnetMin 10.244.9.0 is above"),
        ({"SubnetMin": "not-an-ip"}, "SubnetMin 'not-an-ip' is not an IPv4 address"),
        ({"SubnetMax": "10.244.0.0/24"}, "not an IPv4 address"),
    ],
)
def test_subnet_bounds_errors(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        cfg(Network="10.244.0.0/16", **fields)


@pytest.mark.parametrize(
    ("backend", "match"),
    [
        ({"Type": "udp"}, "unknown backend type 'udp'"),
        ({"Type": "host-gw"}, "unknown backend type"),
        ({"Type": 3}, "unknown backend type"),
        ("vxlan", "Backend must be an object"),
        ({"VNI": "1"}, "Backend.VNI must be an integer"),
        ({"VNI": True}, "Backend.VNI must be an integer"),
        ({"VNI": -1}, "VNI must be between 0 and 16777215"),
        ({"VNI": 1 << 24}, "VNI must be between 0 and 16777215"),
        ({"Port": 0}, "Port must be between 1 and 65535"),
        ({"Port": 65536}, "Port must be between 1 and 65535"),
        ({"Port": 8472.5}, "Backend.Port must be an integer"),
        ({"MTU": 575}, "MTU must be between 576 and 65535"),
        ({"MTU": 65536}, "MTU must be between 576 and 65535"),
        ({"MTU": "1400"}, "Backend.MTU must be an integer"),
    ],
)
def test_backend_errors(backend: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        cfg(Network="10.244.0.0/16", Backend=backend)


def test_backend_range_boundaries_accepted() -> None:
    lo = cfg(Network="10.244.0.0/16", Backend={"Type": "vxlan", "VNI": 0, "Port": 1, "MTU": 576})
    hi = cfg(Network="10.244.0.0/16", Backend={"VNI": (1 << 24) - 1, "Port": 65535, "MTU": 65535})
    assert (lo.backend.vni, lo.backend.port, lo.backend.mtu) == (0, 1, 576)
    assert (hi.backend.vni, hi.backend.port, hi.backend.mtu) == ((1 << 24) - 1, 65535, 65535)


def test_deeply_nested_json_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_config("[" * 100_000)


# -- NetworkConfig methods ------------------------------------------------------------


def test_subnet_at_and_is_allocatable() -> None:
    c = cfg(Network="10.244.0.0/16", SubnetMin="10.244.10.0", SubnetMax="10.244.20.0")
    assert c.subnet_count() == 11
    assert c.subnet_at(0) == IPv4Network("10.244.10.0/24")
    assert c.subnet_at(10) == IPv4Network("10.244.20.0/24")
    assert all(c.is_allocatable(c.subnet_at(i)) for i in range(c.subnet_count()))
    assert not c.is_allocatable(IPv4Network("10.244.9.0/24"))
    assert not c.is_allocatable(IPv4Network("10.244.21.0/24"))
    assert not c.is_allocatable(IPv4Network("10.244.10.0/25"))  # wrong length
    assert not c.is_allocatable(IPv4Network("10.244.10.0/23"))
    assert not c.is_allocatable(IPv4Network("192.168.10.0/24"))


def test_vxlan_mtu() -> None:
    assert cfg(Network="10.244.0.0/16").vxlan_mtu(1500) == 1450
    assert cfg(Network="10.244.0.0/16").vxlan_mtu(9001) == 8951
    assert cfg(Network="10.244.0.0/16", Backend={"MTU": 1380}).vxlan_mtu(1500) == 1380


@pytest.mark.parametrize(
    "fields",
    [
        {"Network": "10.244.0.0/16"},
        {"Network": "172.16.0.0/12", "SubnetLen": 20, "Backend": {"Type": "vxlan", "VNI": 7}},
        {
            "Network": "10.1.0.0/26",
            "SubnetLen": 28,
            "SubnetMin": "10.1.0.32",
            "SubnetMax": "10.1.0.32",
            "Backend": {"Type": "vxlan", "VNI": 0, "Port": 4789, "MTU": 1400},
        },
    ],
)
def test_to_json_round_trip(fields: dict[str, Any]) -> None:
    c = parse_config(json.dumps(fields))
    again = parse_config(c.to_json())
    assert again == c
    # and it is flannel's format: every value written explicitly
    raw = json.loads(c.to_json())
    assert raw["Network"] == fields["Network"]
    assert raw["SubnetLen"] == c.subnet_len
    assert raw["SubnetMin"] == str(c.subnet_min)
    assert raw["Backend"]["Type"] == "vxlan"
    assert ("MTU" in raw["Backend"]) == (c.backend.mtu is not None)
