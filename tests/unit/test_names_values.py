"""Names as values: the zone in the config, aliases in a lease, container records,
registrations and --dns-listen (overlayd/values/names.py, lease.py, lease_rules.py)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network

import pytest

from overlayd.values.config import parse_config
from overlayd.values.errors import ConfigError, LeaseFormatError
from overlayd.values.lease import decode_lease
from overlayd.values.lease_rules import MAX_DNS_NAMES, own_dns_names
from overlayd.values.names import (
    DEFAULT_ZONE,
    ContainerName,
    DnsListen,
    decode_container,
    parse_dns_listen,
    parse_zone,
)
from overlayd.values.registration import Registration, container_label, decode_registration
from tests.builders import node_lease

SUBNET = IPv4Network("10.244.1.0/24")


def test_the_zone_defaults_and_round_trips_through_the_config() -> None:
    assert parse_config('{"Network": "10.244.0.0/16"}').dns_zone == DEFAULT_ZONE
    cfg = parse_config('{"Network": "10.244.0.0/16", "DNSZone": "Corp.Example."}')
    assert cfg.dns_zone == "corp.example"
    assert parse_config(cfg.to_json()) == cfg
    assert "DNSZone" not in parse_config('{"Network": "10.244.0.0/16"}').to_json()


@pytest.mark.parametrize(
    "zone", ["", ".", "a..b", "-x.internal", "x" * 64, "a." * 30 + "b", "10.in-addr.arpa", 7]
)
def test_bad_zones_are_config_errors(zone: object) -> None:
    with pytest.raises(ConfigError, match="DNSZone"):
        parse_config(json.dumps({"Network": "10.244.0.0/16", "DNSZone": zone}))


def test_parse_zone_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="--dns-zone"):
        parse_zone("bad zone", "--dns-zone")


def test_own_aliases_are_normalised_and_checked() -> None:
    assert own_dns_names(["Peer0.Org1.", "peer0.org1", "b"], "--dns-name") == ("b", "peer0.org1")
    assert own_dns_names([], "--dns-name") == ()
    for bad in ("", "a..b", "under_score", "-a", "a" * 64, ("a." * 101) + "b"):
        with pytest.raises(ConfigError, match="--dns-name"):
            own_dns_names([bad], "--dns-name")
    with pytest.raises(ConfigError, match="at most"):
        own_dns_names([f"n{i}" for i in range(MAX_DNS_NAMES + 1)], "--dns-name")


def test_aliases_round_trip_in_the_lease() -> None:
    rec = node_lease(1, "192.0.2.1", dns_names=("peer0.org1", "web"))
    assert decode_lease(rec.subnet, rec.to_json()) == rec
    assert "DNSNames" not in node_lease(1, "192.0.2.1").to_json()


@pytest.mark.parametrize(
    "names",
    ["peer0", [1], ["a b"], ["x" * 300], [f"n{i}" for i in range(MAX_DNS_NAMES + 1)], [None]],
)
def test_hostile_aliases_refuse_the_lease(names: object) -> None:
    raw = json.loads(node_lease(1, "192.0.2.1").to_json()) | {"DNSNames": names}
    with pytest.raises(LeaseFormatError, match="DNSNames"):
        decode_lease(SUBNET, json.dumps(raw))


def test_container_records_round_trip() -> None:
    name = ContainerName(SUBNET, "abc123", "web", IPv4Address("10.244.1.7"))
    assert decode_container(name.key_part(), name.to_json().encode()) == name


@pytest.mark.parametrize(
    "key, value",
    [
        ("10.244.1.0-24", b'{"Name": "web", "IP": "10.244.1.7"}'),  # no container id
        ("10.244.1.0-24/../x", b'{"Name": "web", "IP": "10.244.1.7"}'),
        ("10.244.1.0-24/" + "c" * 65, b'{"Name": "web", "IP": "10.244.1.7"}'),
        ("nonsense/c1", b'{"Name": "web", "IP": "10.244.1.7"}'),
        ("10.244.1.0-24/c1", b"not json"),
        ("10.244.1.0-24/c1", b"[]"),
        ("10.244.1.0-24/c1", b'{"Name": "a.b", "IP": "10.244.1.7"}'),
        ("10.244.1.0-24/c1", b'{"Name": "web", "IP": "10.244.2.7"}'),  # not its subnet
        ("10.244.1.0-24/c1", b'{"Name": "web", "IP": 168034567}'),
        ("10.244.1.0-24/c1", b'{"Name": "web", "IP": "10.244.1.7", "X": "' + b"y" * 600 + b'"}'),
    ],
)
def test_hostile_container_records_are_refused(key: str, value: bytes) -> None:
    with pytest.raises(LeaseFormatError):
        decode_container(key, value)


def test_registrations_round_trip_and_refuse_junk() -> None:
    add = Registration("abc", "web", IPv4Address("10.244.1.7"))
    assert decode_registration(add.to_line()) == add
    assert decode_registration(Registration("abc").to_line()) == Registration("abc")
    for junk in (
        b"",
        b"x" * 2000,
        b"[]",
        b'{"ID": "../etc"}',
        b'{"ID": "abc", "IP": "10.244.1.7", "Name": "a.b"}',
        b'{"ID": "abc", "IP": 5, "Name": "web"}',
        b'{"ID": "abc", "IP": "nope", "Name": "web"}',
    ):
        with pytest.raises(LeaseFormatError):
            decode_registration(junk)


def test_container_label_prefers_the_runtime_name() -> None:
    assert container_label("Web-1", "f" * 64) == "web-1"
    assert container_label("", "F" * 64) == "f" * 12
    assert container_label("not_a_label", "abc") == "abc"
    assert container_label("", "_x") == ""


def test_dns_listen_values() -> None:
    assert parse_dns_listen(("overlay",)) == DnsListen(53, ())
    assert parse_dns_listen(("off",)) == DnsListen(None, ())
    assert not parse_dns_listen(("off",)).enabled
    assert parse_dns_listen(("overlay:5353", "127.0.0.1:5354", "127.0.0.2")) == DnsListen(
        5353, ((IPv4Address("127.0.0.1"), 5354), (IPv4Address("127.0.0.2"), 53))
    )
    for bad in ("localhost", "127.0.0.1:0", "127.0.0.1:x", "overlay:70000", "::1"):
        with pytest.raises(ConfigError, match="--dns-listen"):
            parse_dns_listen((bad,))
