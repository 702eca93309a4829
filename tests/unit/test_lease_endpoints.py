"""The lease's ``Endpoints`` and ``Seen`` (docs/etcd-schema.md): round trip, bounds, and
hostile values refused with one clear reason."""

from __future__ import annotations

import json
from ipaddress import IPv4Network
from typing import Any

import pytest

from overlayd.values.errors import LeaseFormatError
from overlayd.values.lease import NodeEndpoints, SeenEndpoints, decode_lease
from overlayd.values.lease_rules import MAX_ENDPOINTS, MAX_SEEN, check_scope
from overlayd.values.wireguard import Endpoint
from tests.builders import lease

SUBNET = IPv4Network("10.244.3.0/24")
PEER = IPv4Network("10.244.7.0/24")


def ep(text: str) -> Endpoint:
    return Endpoint.parse(text)


def encoded(**fields: Any) -> str:
    base = json.loads(lease(SUBNET, "10.0.1.11").to_json())
    base.update(fields)
    return json.dumps(base)


def test_none_published_leaves_the_fields_out() -> None:
    record = lease(SUBNET, "10.0.1.11")
    assert "Endpoints" not in record.to_json() and "Seen" not in record.to_json()
    back = decode_lease(SUBNET, record.to_json())
    assert back.endpoints == NodeEndpoints() and back.seen == ()


def test_one_of_each_round_trips() -> None:
    record = lease(
        SUBNET, "10.0.1.11",
        endpoints=NodeEndpoints((ep("198.51.100.2:8473"),), (ep("198.51.100.2:51820"),)),
        seen=(SeenEndpoints(PEER, ep("203.0.113.2:8473"), None),),
    )  # fmt: skip
    assert decode_lease(SUBNET, record.to_json()) == record


def test_the_most_allowed_round_trip() -> None:
    many = tuple(ep(f"198.51.100.2:{1000 + i}") for i in range(MAX_ENDPOINTS))
    seen = tuple(
        SeenEndpoints(IPv4Network(f"10.244.{i}.0/24"), ep("203.0.113.2:8473"), many[0])
        for i in range(10, 10 + MAX_SEEN)
    )
    record = lease(SUBNET, "10.0.1.11", endpoints=NodeEndpoints(many, many), seen=seen)
    assert decode_lease(SUBNET, record.to_json()) == record


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"Endpoints": []}, "Endpoints must be an object"),
        ({"Endpoints": {"Probe": "198.51.100.2:8473"}}, "Endpoints.Probe must be a list"),
        ({"Endpoints": {"Probe": ["198.51.100.2:1"] * (MAX_ENDPOINTS + 1)}}, "at most 4"),
        ({"Endpoints": {"Probe": ["198.51.100.2"]}}, "not an a.b.c.d:port"),
        ({"Endpoints": {"Probe": ["198.51.100.2:0"]}}, "not an a.b.c.d:port"),
        ({"Endpoints": {"WireGuard": ["198.51.100.2:65536"]}}, "not an a.b.c.d:port"),
        ({"Endpoints": {"Probe": ["[::1]:8473"]}}, "not an a.b.c.d:port"),
        ({"Endpoints": {"Probe": [8473]}}, "a.b.c.d:port string"),
        ({"Endpoints": {"Probe": ["1" * 1000]}}, "a.b.c.d:port string"),
        ({"Endpoints": {"Probe": ["127.0.0.1:8473"]}}, "loopback"),
        ({"Endpoints": {"WireGuard": ["224.0.0.1:51820"]}}, "multicast"),
        ({"Seen": {}}, "Seen must be a list"),
        ({"Seen": ["x"]}, "Seen items must be objects"),
        ({"Seen": [{"Subnet": "10.244.7.0/24"}]}, "not a subnet key"),
        ({"Seen": [{"Subnet": "10.244.7.0-24", "Probe": "0.0.0.0:1"}]}, "unspecified"),
        ({"Seen": [{"Subnet": "10.244.7.0-24", "WireGuard": "169.254.1.1:1"}]}, "link-local"),
        ({"Seen": [{"Subnet": "10.244.7.0-24"}] * (MAX_SEEN + 1)}, "at most 16"),
    ],
)
def test_hostile_values_refuse_the_record_with_one_reason(
    fields: dict[str, Any], says: str
) -> None:
    with pytest.raises(LeaseFormatError) as caught:
        decode_lease(SUBNET, encoded(**fields))
    message = str(caught.value)
    assert says in message
    assert len(message) < 300  # quoted values are truncated


def test_an_endpoint_inside_the_overlay_network_is_out_of_scope() -> None:
    inside = NodeEndpoints((ep("10.244.9.1:8473"),))
    assert check_scope(lease(SUBNET, "10.0.1.11", endpoints=inside), IPv4Network("10.244.0.0/16"))
    seen = (SeenEndpoints(PEER, None, ep("10.244.9.1:51820")),)
    why = check_scope(lease(SUBNET, "10.0.1.11", seen=seen), IPv4Network("10.244.0.0/16"))
    assert why is not None and "10.244.9.1:51820" in why
    outside = NodeEndpoints((ep("198.51.100.2:8473"),))
    assert check_scope(lease(SUBNET, "10.0.1.11", endpoints=outside), IPv4Network(SUBNET)) is None
