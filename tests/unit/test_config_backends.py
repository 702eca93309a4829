"""Backend config: vxlan, wireguard and vxlan+wireguard, their options, PSK and MTU rules."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from overlayd.values.config import (
    BACKEND_TYPES,
    DEFAULT_KEEPALIVE,
    VXLAN,
    VXLAN_WIREGUARD,
    WIREGUARD,
    BackendConfig,
    NetworkConfig,
    parse_backend,
    parse_config,
)
from overlayd.values.errors import ConfigError
from overlayd.values.wireguard import DEFAULT_LISTEN_PORT, PresharedKey

PSK_RAW = bytes(range(1, 33))
PSK_B64 = base64.b64encode(PSK_RAW).decode()


def cfg(backend: Any) -> NetworkConfig:
    return parse_config(json.dumps({"Network": "10.244.0.0/16", "Backend": backend}))


# -- types and defaults ---------------------------------------------------------------


def test_backend_types_are_named() -> None:
    assert BACKEND_TYPES == ("vxlan", "wireguard", "vxlan+wireguard")


@pytest.mark.parametrize(
    ("text", "btype"),
    [
        ("vxlan", VXLAN),
        ("VXLAN", VXLAN),
        ("wireguard", WIREGUARD),
        ("WireGuard", WIREGUARD),
        ("vxlan+wireguard", VXLAN_WIREGUARD),
        ("VXLAN+WireGuard", VXLAN_WIREGUARD),
    ],
)
def test_type_is_case_insensitive(text: str, btype: str) -> None:
    assert parse_backend({"Type": text}).type == btype


@pytest.mark.parametrize("btype", [WIREGUARD, VXLAN_WIREGUARD])
def test_wireguard_defaults(btype: str) -> None:
    b = parse_backend({"Type": btype})
    assert b == BackendConfig(type=btype)
    assert b.listen_port == DEFAULT_LISTEN_PORT == 51820
    assert b.persistent_keepalive == DEFAULT_KEEPALIVE == 25
    assert b.psk is None and b.mtu is None
    assert (b.vni, b.port) == (1, 8472)  # VXLAN's options keep their defaults


@pytest.mark.parametrize(
    ("btype", "vxlan", "wireguard"),
    [(VXLAN, True, False), (WIREGUARD, False, True), (VXLAN_WIREGUARD, True, True)],
)
def test_uses(btype: str, vxlan: bool, wireguard: bool) -> None:
    b = BackendConfig(type=btype)
    assert (b.uses_vxlan, b.uses_wireguard) == (vxlan, wireguard)


def test_missing_backend_is_vxlan() -> None:
    assert parse_backend(None) == BackendConfig(type=VXLAN)
    assert parse_backend({}).type == VXLAN


def test_wireguard_options() -> None:
    b = parse_backend(
        {
            "Type": "wireguard",
            "ListenPort": 51000,
            "PersistentKeepaliveInterval": 0,
            "PSK": PSK_B64,
            "MTU": 1380,
        }
    )
    assert b.listen_port == 51000
    assert b.persistent_keepalive == 0  # 0 = off, as in flannel
    assert b.psk == PresharedKey(PSK_RAW)
    assert b.mtu == 1380


def test_mixed_mode_keeps_vxlan_options() -> None:
    b = parse_backend({"Type": "vxlan+wireguard", "VNI": 42, "Port": 4789, "ListenPort": 51821})
    assert (b.vni, b.port, b.listen_port) == (42, 4789, 51821)


def test_flannel_wireguard_config_is_accepted() -> None:
    # flannel's IPv6-related keys are tolerated (and unused: IPv4 only)
    b = parse_backend(
        {"Type": "wireguard", "ListenPort": 51820, "ListenPortV6": 51821, "Mode": "separate"}
    )
    assert b == BackendConfig(type=WIREGUARD)


def test_empty_psk_means_none() -> None:
    assert parse_backend({"Type": "wireguard", "PSK": ""}).psk is None


def test_psk_with_surrounding_whitespace() -> None:
    assert parse_backend({"Type": "wireguard", "PSK": f" {PSK_B64}\n"}).psk == PresharedKey(PSK_RAW)


def test_wireguard_listen_port_may_equal_vxlan_port_without_vxlan() -> None:
    assert parse_backend({"Type": "wireguard", "ListenPort": 8472}).listen_port == 8472


def test_boundaries_accepted() -> None:
    lo = parse_backend({"Type": "wireguard", "ListenPort": 1, "PersistentKeepaliveInterval": 0})
    hi = parse_backend(
        {"Type": "wireguard", "ListenPort": 65535, "PersistentKeepaliveInterval": 65535}
    )
    assert (lo.listen_port, lo.persistent_keepalive) == (1, 0)
    assert (hi.listen_port, hi.persistent_keepalive) == (65535, 65535)


@pytest.mark.parametrize("key", ["VNI", "Port", "MTU", "ListenPort", "PersistentKeepaliveInterval"])
def test_null_option_means_default(key: str) -> None:
    # null used to slip through as None and fail an assertion instead of meaning "unset"
    assert parse_backend({"Type": "vxlan+wireguard", key: None}) == BackendConfig(
        type=VXLAN_WIREGUARD
    )


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "match"),
    [
        ({"Type": "wg"}, "unknown backend type 'wg'; supported: vxlan, wireguard, vxlan\\+"),
        ({"Type": "wireguard", "ListenPort": 0}, "ListenPort must be between 1 and 65535, got 0"),
        ({"Type": "wireguard", "ListenPort": 65536}, "ListenPort must be between 1 and 65535"),
        ({"Type": "wireguard", "ListenPort": "51820"}, "Backend.ListenPort must be an integer"),
        ({"Type": "wireguard", "ListenPort": True}, "Backend.ListenPort must be an integer"),
        (
            {"Type": "wireguard", "PersistentKeepaliveInterval": -1},
            "PersistentKeepaliveInterval must be between 0 \\(off\\) and 65535 seconds, got -1",
        ),
        (
            {"Type": "wireguard", "PersistentKeepaliveInterval": 65536},
            "PersistentKeepaliveInterval must be between",
        ),
        (
            {"Type": "wireguard", "PersistentKeepaliveInterval": 2.5},
            "PersistentKeepaliveInterval must be an integer",
        ),
        (
            {"Type": "wireguard", "PersistentKeepaliveInterval": "25s"},
            "PersistentKeepaliveInterval must be an integer",
        ),
        ({"Type": "wireguard", "PSK": 12345}, "PSK must be a base64 string .*got a int"),
        ({"Type": "wireguard", "PSK": ["x"]}, "PSK must be a base64 string .*got a list"),
        ({"Type": "wireguard", "PSK": "not base64!"}, "PSK must be 32 bytes in base64"),
        (
            {"Type": "wireguard", "PSK": base64.b64encode(bytes(16)).decode()},
            "PSK must be 32 bytes in base64",
        ),
        (
            {"Type": "wireguard", "PSK": base64.b64encode(bytes(33)).decode()},
            "PSK must be 32 bytes in base64",
        ),
        ({"Type": "wireguard", "PSK": PSK_B64.rstrip("=")}, "PSK must be 32 bytes in base64"),
        (
            {"Type": "wireguard", "PSK": base64.b64encode(bytes(32)).decode()},
            "PSK is all zeros",
        ),
        (
            {"Type": "vxlan", "PSK": PSK_B64},
            "Backend.PSK is a WireGuard option, but Backend.Type is 'vxlan', which does not",
        ),
        ({"ListenPort": 51820}, "Backend.ListenPort is a WireGuard option"),
        (
            {"Type": "VXLAN", "PersistentKeepaliveInterval": 25},
            "Backend.PersistentKeepaliveInterval is a WireGuard option",
        ),
        (
            {"Type": "vxlan+wireguard", "ListenPort": 8472},
            "ListenPort and Backend.Port are both 8472",
        ),
        (
            {"Type": "vxlan+wireguard", "Port": 51820},
            "ListenPort and Backend.Port are both 51820",
        ),
        ({"Type": "wireguard", "VNI": 1 << 24}, "VNI must be between"),
        ({"Type": "vxlan+wireguard", "MTU": 500}, "MTU must be between 576 and 65535"),
    ],
)
def test_backend_errors(backend: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_backend(backend)
    with pytest.raises(ConfigError, match=match):
        cfg(backend)


@pytest.mark.parametrize(
    "secret",
    [
        base64.b64encode(b"secret-key-material-31-bytes-ab").decode(),  # 31 bytes
        "c2VjcmV0LWtleS1tYXRlcmlhbC1ub3QtYmFzZTY0IQ$$",
    ],
)
def test_psk_error_does_not_show_the_value(secret: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_backend({"Type": "wireguard", "PSK": secret})
    assert secret not in str(info.value)
    assert secret[:8] not in str(info.value)


def test_vxlan_with_empty_wireguard_options_is_fine() -> None:
    # null or "" is how tools write "not set"; only a real value is a mistake
    assert parse_backend({"Type": "vxlan", "PSK": "", "ListenPort": None}).type == VXLAN


# -- secrecy --------------------------------------------------------------------------


def test_psk_never_in_repr_or_str() -> None:
    c = cfg({"Type": "wireguard", "PSK": PSK_B64})
    assert c.backend.psk is not None
    for text in (repr(c), str(c), repr(c.backend), str(c.backend), repr(c.backend.psk)):
        assert PSK_B64 not in text
        assert PSK_RAW.hex() not in text
        assert repr(PSK_RAW) not in text


def test_to_json_redacts_on_request() -> None:
    c = cfg({"Type": "vxlan+wireguard", "PSK": PSK_B64})
    shown = c.to_json(redact=True)
    assert PSK_B64 not in shown
    assert json.loads(shown)["Backend"]["PSK"] == "(redacted)"
    with pytest.raises(ConfigError, match="PSK must be 32 bytes"):
        parse_config(shown)  # a redacted config is for people, never written back
    assert json.loads(c.to_json())["Backend"]["PSK"] == PSK_B64


# -- to_json --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "backend",
    [
        {"Type": "wireguard"},
        {"Type": "wireguard", "ListenPort": 40000, "PersistentKeepaliveInterval": 0},
        {"Type": "wireguard", "PSK": PSK_B64, "MTU": 1300},
        {"Type": "vxlan+wireguard"},
        {"Type": "vxlan+wireguard", "VNI": 9, "Port": 4789, "ListenPort": 4790, "PSK": PSK_B64},
        {"Type": "vxlan", "VNI": 3, "MTU": 1400},
    ],
)
def test_to_json_round_trip(backend: dict[str, Any]) -> None:
    c = cfg(backend)
    assert parse_config(c.to_json()) == c


def test_to_json_wireguard_fields() -> None:
    raw = json.loads(cfg({"Type": "wireguard", "PSK": PSK_B64}).to_json())["Backend"]
    assert raw == {
        "Type": "wireguard",
        "VNI": 1,
        "Port": 8472,
        "ListenPort": 51820,
        "PersistentKeepaliveInterval": 25,
        "PSK": PSK_B64,
    }


def test_to_json_vxlan_has_no_wireguard_fields() -> None:
    raw = json.loads(cfg({"Type": "vxlan"}).to_json())["Backend"]
    assert raw == {"Type": "vxlan", "VNI": 1, "Port": 8472}


def test_to_json_without_psk_has_no_psk_key() -> None:
    assert "PSK" not in json.loads(cfg({"Type": "wireguard"}).to_json())["Backend"]


# -- MTU ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("btype", "underlay", "vxlan", "wireguard", "subnet"),
    [
        ("vxlan", 1500, 1450, 1420, 1450),
        ("wireguard", 1500, 1450, 1420, 1420),
        ("vxlan+wireguard", 1500, 1450, 1420, 1420),  # the smaller: safe on both paths
        ("vxlan+wireguard", 9001, 8951, 8921, 8921),
        ("wireguard", 1460, 1410, 1380, 1380),  # e.g. GCP's underlay
    ],
)
def test_mtu_rules(btype: str, underlay: int, vxlan: int, wireguard: int, subnet: int) -> None:
    c = cfg({"Type": btype})
    assert c.vxlan_mtu(underlay) == vxlan
    assert c.wireguard_mtu(underlay) == wireguard
    assert c.subnet_mtu(underlay) == subnet


@pytest.mark.parametrize("btype", BACKEND_TYPES)
def test_configured_mtu_wins_everywhere(btype: str) -> None:
    c = cfg({"Type": btype, "MTU": 1300})
    assert c.vxlan_mtu(9001) == c.wireguard_mtu(9001) == c.subnet_mtu(9001) == 1300
