"""What a lease record may say: caps, DNS-label names, underlay scope; our own flags."""

from __future__ import annotations

import base64
import json
import re
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
from click.testing import CliRunner

from overlayd.cli.daemon_main import main as overlayd_main
from overlayd.values.errors import ConfigError, LeaseFormatError
from overlayd.values.lease import LeaseRecord, decode_lease
from overlayd.values.lease_rules import (
    MAX_ADDRESSES,
    MAX_VALUE_BYTES,
    check_own_record,
    check_scope,
    default_node_name,
    flannel_node_name,
    is_label,
    own_addresses,
    own_label,
    public_error,
    publishable,
    scope_error,
)
from tests.builders import lease

SUBNET = IPv4Network("10.244.3.0/24")
NETWORK = IPv4Network("10.244.0.0/16")
SHORT = 200  # an error message about any value stays one short line


def record(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "PublicIP": "198.51.100.7",
        "BackendType": "vxlan",
        "BackendData": {"VtepMAC": "0a:1b:2c:3d:4e:5f", "VNI": 1},
        "Node": "node-a",
        "NodeID": "0123abcd" * 4,
        "Site": "eu-1",
        "PrivateIPs": ["10.0.0.7"],
        "PublicIPs": ["198.51.100.7"],
        "PublicKey": base64.b64encode(bytes(range(32))).decode(),
        "ProbePort": 8473,
    }
    raw.update(overrides)
    return raw


def refused(value: str | bytes) -> str:
    with pytest.raises(LeaseFormatError) as info:
        decode_lease(SUBNET, value)
    text = str(info.value)
    assert len(text) < SHORT, text
    return text


def addrs(n: int, base: str = "198.51.100") -> list[str]:
    return [f"{base}.{i + 1}" for i in range(n)]


# -- sizes -------------------------------------------------------------------------------


def test_a_full_real_record_fits_well_within_the_size_cap() -> None:
    raw = record(PrivateIPs=addrs(MAX_ADDRESSES, "10.0.0"), PublicIPs=addrs(MAX_ADDRESSES))
    raw["Node"] = "n" * 63
    value = json.dumps(raw)
    assert len(value) < MAX_VALUE_BYTES / 4
    rec = decode_lease(SUBNET, value)
    assert len(rec.private_ips) == len(rec.public_ips) == MAX_ADDRESSES


def test_value_size_is_checked_before_parsing() -> None:
    pad = MAX_VALUE_BYTES - len(json.dumps(record(Pad="")))
    at_limit = json.dumps(record(Pad="x" * pad))
    assert len(at_limit) == MAX_VALUE_BYTES
    decode_lease(SUBNET, at_limit)  # unknown fields are ignored; the size is what counts
    over = json.dumps(record(Pad="x" * (pad + 1)))
    assert f"{MAX_VALUE_BYTES + 1} bytes" in refused(over)
    assert "bytes" in refused(over.encode())
    assert "bytes" in refused("[" * 1_000_000)  # never reaches the JSON parser


def test_a_1_mb_node_and_a_200000_item_list_give_short_errors() -> None:
    assert "bytes" in refused(json.dumps(record(Node="n" * 1_000_000)))
    assert "bytes" in refused(json.dumps(record(PublicIPs=["1"] * 200_000)))


@pytest.mark.parametrize("field", ["PrivateIPs", "PublicIPs"])
@pytest.mark.parametrize("count", [0, 1, MAX_ADDRESSES])
def test_address_lists_up_to_the_cap(field: str, count: int) -> None:
    base = "10.0.0" if field == "PrivateIPs" else "198.51.100"
    rec = decode_lease(SUBNET, json.dumps(record(**{field: addrs(count, base)})))
    got = rec.private_ips if field == "PrivateIPs" else rec.public_ips
    assert len(got) == count


@pytest.mark.parametrize("field", ["PrivateIPs", "PublicIPs"])
def test_address_list_over_the_cap(field: str) -> None:
    text = refused(json.dumps(record(**{field: addrs(MAX_ADDRESSES + 1)})))
    assert f"{field} has {MAX_ADDRESSES + 1} items, at most {MAX_ADDRESSES}" in text


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"Node": ["x"] * 1000}, "Node must be a string"),
        ({"Node": "x" * 2000}, "Node 'xxx"),
        ({"PublicKey": "A" * 4000}, "PublicKey must be 32 bytes"),
        ({"PublicKey": ["A"] * 1000}, "PublicKey must be 32 bytes"),
        ({"NodeID": "x" * 65}, "NodeID 'xxx"),
        ({"NodeID": "a/b"}, "not a node id"),
        ({"BackendType": "v" * 33}, "not a backend type"),
        ({"BackendType": "VXLAN"}, "not a backend type"),
        ({"BackendType": ""}, "not a backend type"),
        ({"PrivateIPs": {"k": "v" * 3000}}, "PrivateIPs must be a list"),
        ({"PublicIPs": [["1"] * 1000]}, "PublicIPs must be a string"),
        ({"PublicIP": "x" * 3000}, "not an IPv4 address"),
        ({"ProbePort": "9" * 3000}, "ProbePort must be a port"),
        ({"GatewayCandidate": "y" * 3000}, "true or false"),
        ({"BackendData": {"VtepMAC": "m" * 3000, "VNI": 1}}, "invalid MAC address"),
        ({"BackendData": {"VtepMAC": "0a:1b:2c:3d:4e:5f", "VNI": [1] * 900}}, "VNI must be"),
    ],
)
def test_long_values_are_refused_with_a_short_quote(overrides: dict[str, Any], match: str) -> None:
    assert match in refused(json.dumps(record(**overrides)))


def test_node_id_bounds() -> None:
    assert decode_lease(SUBNET, json.dumps(record(NodeID="x" * 64))).node_id == "x" * 64
    assert decode_lease(SUBNET, json.dumps(record(NodeID=""))).node_id == ""


# -- names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("a", True),
        ("node-1", True),
        ("N0DE", True),
        ("x" * 63, True),
        ("x" * 64, False),
        ("", False),
        ("-a", False),
        ("a-", False),
        ("a.b", False),
        ("a_b", False),
        ("a b", False),
        ("é", False),
        ("a\n", False),
    ],
)
def test_dns_labels(text: str, ok: bool) -> None:
    assert is_label(text) is ok


@pytest.mark.parametrize("field", ["Node", "Site"])
def test_node_and_site_must_be_labels(field: str) -> None:
    assert decode_lease(SUBNET, json.dumps(record(**{field: "x" * 63})))
    for bad in ("x" * 64, "-x", "x.y", "x_y"):
        assert "is not a DNS label" in refused(json.dumps(record(**{field: bad})))


def test_empty_site_is_the_default_site() -> None:
    assert decode_lease(SUBNET, json.dumps(record(Site=""))).site == "default"


def test_flannel_records_still_decode_with_a_label_name() -> None:
    value = json.dumps(
        {
            "PublicIP": "192.0.2.1",
            "PublicIPv6": None,
            "BackendType": "vxlan",
            "BackendData": {"VNI": 1, "VtepMAC": "EA:12:34:56:78:9A"},
        }
    )
    rec = decode_lease(SUBNET, value)
    assert rec.node == "flannel-192-0-2-1" == flannel_node_name(IPv4Address("192.0.2.1"))
    assert is_label(flannel_node_name(IPv4Address("255.255.255.254")))


# -- scope -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("0.0.0.0", "unspecified"),
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.255", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("169.254.1.1", "link-local"),
        ("169.254.0.0", "link-local"),
    ],
)
@pytest.mark.parametrize("field", ["PublicIP", "PrivateIPs", "PublicIPs"])
def test_out_of_scope_addresses_refuse_the_record(address: str, why: str, field: str) -> None:
    assert scope_error(IPv4Address(address)) is not None
    value = address if field == "PublicIP" else ["10.0.0.7", address]
    text = refused(json.dumps(record(**{field: value})))
    assert f"{field} {address} is {why}" in text


@pytest.mark.parametrize(
    "address", ["1.0.0.1", "10.0.0.1", "192.168.1.1", "100.64.0.1", "223.255.255.255", "192.0.2.10"]
)
def test_underlay_addresses_in_scope(address: str) -> None:
    assert scope_error(IPv4Address(address)) is None


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("10.2.3.4", "private"),
        ("172.31.0.1", "private"),
        ("192.168.0.1", "private"),
        ("100.64.0.1", "shared"),
        ("0.1.2.3", "this network"),
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("198.18.0.1", "benchmarking"),
    ],
)
def test_not_public(address: str, why: str) -> None:
    assert why in (public_error(IPv4Address(address)) or "")


@pytest.mark.parametrize("address", ["1.1.1.1", "8.8.8.8", "203.0.113.5", "198.51.100.1"])
def test_public(address: str) -> None:
    assert public_error(IPv4Address(address)) is None


def decoded(**overrides: Any) -> LeaseRecord:
    return decode_lease(SUBNET, json.dumps(record(**overrides)))


@pytest.mark.parametrize("field", ["PublicIP", "PrivateIPs", "PublicIPs"])
def test_an_underlay_address_inside_the_overlay_network_is_refused(field: str) -> None:
    inside = "10.244.77.7"
    rec = decoded(**{field: inside if field == "PublicIP" else [inside]})
    why = check_scope(rec, NETWORK)
    assert why == f"underlay address {inside} is inside the overlay network {NETWORK}"
    assert check_scope(rec, IPv4Network("10.245.0.0/16")) is None
    assert check_scope(decoded(), NETWORK) is None


def test_network_edges() -> None:
    assert check_scope(decoded(PublicIP="10.243.255.255"), NETWORK) is None
    assert check_scope(decoded(PublicIP="10.245.0.0"), NETWORK) is None
    assert check_scope(decoded(PublicIP="10.244.0.0"), NETWORK) is not None
    assert check_scope(decoded(PublicIP="10.244.255.255"), NETWORK) is not None


# -- our own flags -------------------------------------------------------------------------


def test_own_label() -> None:
    assert own_label("host-a", "--node-name") == "host-a"
    with pytest.raises(ConfigError, match="--site 'a_b' is not a DNS label") as info:
        own_label("a_b", "--site")
    assert info.value.exit_code == 2
    with pytest.raises(ConfigError) as info:
        own_label("x" * 100_000, "--node-name")
    assert len(str(info.value)) < SHORT


def test_default_node_name_is_the_first_label_of_the_host_name() -> None:
    assert default_node_name("web-1") == "web-1"
    assert default_node_name("web-1.eu.example.com") == "web-1"
    for bad in ("web_1.example.com", "-web", "", "x" * 64):
        with pytest.raises(ConfigError, match="does not give a valid node name") as info:
            default_node_name(bad)
        assert "--node-name" in info.value.hint


def test_own_public_addresses() -> None:
    good = (IPv4Address("198.51.100.7"), IPv4Address("203.0.113.9"))
    assert own_addresses(good, "--public-ip") == good
    assert own_addresses((), "--public-ip") == ()
    for bad in ("127.0.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "169.254.1.1"):
        with pytest.raises(ConfigError, match=re.escape(f"--public-ip {bad} is ")) as info:
            own_addresses((IPv4Address(bad),), "--public-ip")
        assert info.value.exit_code == 2
    too_many = tuple(IPv4Address(a) for a in addrs(MAX_ADDRESSES + 1))
    with pytest.raises(ConfigError, match="at most 16"):
        own_addresses(too_many, "--public-ip")


def own(public: tuple[str, ...] = (), private: str = "10.0.0.7") -> LeaseRecord:
    return lease(
        NETWORK,
        public[0] if public else private,
        node="me",
        node_id="id",
        vtep_mac="0a:1b:2c:3d:4e:5f",
        private_ips=(private,),
        public_ips=public,
    )


def test_own_record_in_the_network() -> None:
    check_own_record(own(("198.51.100.7",)), NETWORK)
    with pytest.raises(
        ConfigError, match=re.escape("--public-ip 10.244.1.1 is inside the overlay")
    ):
        check_own_record(own(("10.244.1.1",)), NETWORK)
    with pytest.raises(
        ConfigError, match=re.escape("underlay address 10.244.9.9 is inside")
    ) as info:
        check_own_record(own(private="10.244.9.9"), NETWORK)
    assert "--iface" in info.value.hint
    with pytest.raises(ConfigError, match=re.escape("169.254.3.3 is link-local")):
        check_own_record(own(private="169.254.3.3"), NETWORK)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--node-name", "a.b"], "--node-name 'a.b' is not a DNS label"),
        (["--node-name", "x" * 64], "--node-name 'xxx"),
        (["--site", "eu_1"], "--site 'eu_1' is not a DNS label"),
        (["--public-ip", "127.0.0.1"], "--public-ip 127.0.0.1 is loopback"),
        (["--public-ip", "198.51.100.7", "--public-ip", "224.0.0.1"], "224.0.0.1 is multicast"),
    ],
)
def test_daemon_flags_refused_at_start_with_exit_code_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(overlayd_main, ["--etcd-endpoints", "127.0.0.1:1", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_publishable_public_addresses() -> None:
    seen = [IPv4Address(a) for a in ("198.51.100.7", "127.0.0.1", "10.244.3.3", "169.254.1.1")]
    assert publishable(seen, NETWORK) == (IPv4Address("198.51.100.7"),)
    many = [IPv4Address(a) for a in addrs(MAX_ADDRESSES + 3)]
    assert publishable(many, NETWORK) == tuple(many[:MAX_ADDRESSES])
    assert publishable([], NETWORK) == ()
