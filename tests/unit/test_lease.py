"""Lease key names and lease record decoding."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from overlayd.values.errors import LeaseFormatError
from overlayd.values.kernel_state import MacAddress
from overlayd.values.lease import (
    DEFAULT_SITE,
    LeaseRecord,
    decode_lease,
    parse_subnet_arg,
    parse_subnet_key_name,
    subnet_key_name,
)
from tests.builders import lease

SUBNET = IPv4Network("10.244.3.0/24")


def full_record() -> LeaseRecord:
    return lease(
        SUBNET,
        "198.51.100.7",
        node="node-a",
        node_id="0123abcd",
        vtep_mac="0a:1b:2c:3d:4e:5f",
        vni=42,
        site="eu-1",
        private_ips=("10.0.0.7", "10.1.0.7"),
        public_ips=("198.51.100.7", "203.0.113.9"),
    )


def valid_value(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(full_record().to_json())
    raw.update(overrides)
    return raw


# -- key names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subnet", "name"),
    [
        ("10.244.3.0/24", "10.244.3.0-24"),
        ("10.1.0.32/28", "10.1.0.32-28"),
        ("172.16.0.0/12", "172.16.0.0-12"),
    ],
)
def test_subnet_key_name_round_trip(subnet: str, name: str) -> None:
    assert subnet_key_name(IPv4Network(subnet)) == name
    assert parse_subnet_key_name(name) == IPv4Network(subnet)


@pytest.mark.parametrize(
    "name",
    ["10.244.3.0", "10.244.3.0/24", "10.244.3.1-24", "10.244.3.0-33", "foo-24", "-24", "", "x"],
)
def test_parse_subnet_key_name_rejects(name: str) -> None:
    with pytest.raises(LeaseFormatError, match="not a subnet key"):
        parse_subnet_key_name(name)


@pytest.mark.parametrize("name", ["10.244.3.0-024", "10.244.3.0- 24", "10.244.3.0-+24"])
def test_parse_subnet_key_name_rejects_non_canonical(name: str) -> None:
    with pytest.raises(LeaseFormatError):
        parse_subnet_key_name(name)


def test_parse_subnet_arg_accepts_both_forms() -> None:
    assert parse_subnet_arg("10.244.3.0/24") == SUBNET
    assert parse_subnet_arg("10.244.3.0-24") == SUBNET
    with pytest.raises(LeaseFormatError):
        parse_subnet_arg("10.244.3.5/24")


# -- decoding -------------------------------------------------------------------------


def test_to_json_round_trip() -> None:
    rec = full_record()
    assert decode_lease(SUBNET, rec.to_json()) == rec
    assert decode_lease(SUBNET, rec.to_json().encode()) == rec
    assert rec.overlay_ip == IPv4Address("10.244.3.0")


def test_to_json_has_flannel_fields() -> None:
    raw = json.loads(full_record().to_json())
    assert raw["PublicIP"] == "198.51.100.7"
    assert raw["BackendType"] == "vxlan"
    assert raw["BackendData"] == {"VtepMAC": "0a:1b:2c:3d:4e:5f", "VNI": 42}
    assert raw["Node"] == "node-a" and raw["NodeID"] == "0123abcd"


def test_flannel_written_lease_decodes() -> None:
    value = json.dumps(
        {
            "PublicIP": "192.0.2.10",
            "PublicIPv6": None,
            "BackendType": "vxlan",
            "BackendData": {"VNI": 1, "VtepMAC": "EA:12:34:56:78:9A"},
        }
    )
    rec = decode_lease(SUBNET, value)
    assert rec.node == "flannel-192-0-2-10"
    assert rec.node_id == ""
    assert rec.public_ip == IPv4Address("192.0.2.10")
    assert rec.vtep_mac == MacAddress("ea:12:34:56:78:9a")
    assert rec.vni == 1
    assert rec.site == DEFAULT_SITE
    assert rec.private_ips == () and rec.public_ips == ()
    assert rec.subnet == SUBNET


def test_vni_defaults_to_one_and_null_lists_are_empty() -> None:
    raw = valid_value(PrivateIPs=None, PublicIPs=None, Site="")
    del raw["BackendData"]["VNI"]
    rec = decode_lease(SUBNET, json.dumps(raw))
    assert rec.vni == 1
    assert rec.private_ips == () and rec.public_ips == ()
    assert rec.site == DEFAULT_SITE


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("not json", "not JSON"),
        (b"\xff\xfe{", "not JSON"),
        ("", "empty value"),
        ("[]", "JSON object"),
        ("null", "JSON object"),
        ('"text"', "JSON object"),
    ],
)
def test_not_a_json_object(value: str | bytes, match: str) -> None:
    with pytest.raises(LeaseFormatError, match=match):
        decode_lease(SUBNET, value)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"PublicIP": None}, "PublicIP must be a string"),
        ({"PublicIP": 3221225985}, "PublicIP must be a string"),
        ({"PublicIP": "192.0.2"}, "PublicIP '192.0.2' is not an IPv4 address"),
        ({"PublicIP": "2001:db8::1"}, "not an IPv4 address"),
        ({"BackendData": None}, "BackendData must be an object"),
        ({"BackendData": "x"}, "BackendData must be an object"),
        ({"BackendData": {"VNI": 1}}, "invalid MAC address"),
        ({"BackendData": {"VtepMAC": "0a:1b:2c:3d:4e", "VNI": 1}}, "invalid MAC"),
        ({"BackendData": {"VtepMAC": "0a:1b:2c:3d:4e:5g", "VNI": 1}}, "invalid MAC"),
        ({"BackendData": {"VtepMAC": "0a1b2c3d4e5f", "VNI": 1}}, "invalid MAC"),
        ({"BackendData": {"VtepMAC": 1234, "VNI": 1}}, "VtepMAC must be a string"),
        ({"BackendData": {"VtepMAC": "0a:1b:2c:3d:4e:5f", "VNI": "1"}}, "VNI must be an integer"),
        ({"BackendData": {"VtepMAC": "0a:1b:2c:3d:4e:5f", "VNI": True}}, "VNI must be an integer"),
        ({"BackendData": {"VtepMAC": "0a:1b:2c:3d:4e:5f", "VNI": 1.0}}, "VNI must be an integer"),
        ({"Node": 7}, "Node must be a string"),
        ({"Node": ""}, "Node '' is not a DNS label"),
        ({"NodeID": 12}, "NodeID must be a string"),
        ({"Site": ["eu"]}, "Site must be a string"),
        ({"BackendType": None}, "BackendType must be a string"),
        ({"PrivateIPs": "10.0.0.1"}, "PrivateIPs must be a list"),
        ({"PrivateIPs": ["10.0.0.1", 5]}, "PrivateIPs must be a string"),
        ({"PublicIPs": ["198.51.100.300"]}, "PublicIPs '198.51.100.300' is not an IPv4"),
        ({"PublicIPs": {"a": "198.51.100.1"}}, "PublicIPs must be a list"),
    ],
)
def test_strict_decoding(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(LeaseFormatError, match=match):
        decode_lease(SUBNET, json.dumps(valid_value(**overrides)))


def test_mac_is_normalised_on_decode() -> None:
    raw = valid_value(BackendData={"VtepMAC": " 0A-1B-2C-3D-4E-5F ", "VNI": 42})
    assert decode_lease(SUBNET, json.dumps(raw)) == full_record()


def test_deeply_nested_value_is_a_format_error() -> None:
    with pytest.raises(LeaseFormatError):
        decode_lease(SUBNET, "[" * 100_000)
