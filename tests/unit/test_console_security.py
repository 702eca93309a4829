"""The console's access rules (overlayd/console/security.py): listen addresses, the token,
CSRF and Host checks, the token file."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import pytest

from overlayd.console.security import (
    Access,
    Listen,
    allowed_hosts,
    listen_rule,
    parse_listen,
    read_token,
)
from overlayd.values.errors import ConfigError

TOKEN = "0123456789abcdef-token"


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:8080") == Listen(ip_address("127.0.0.1"), 8080)
    assert parse_listen("[::1]:0") == Listen(ip_address("::1"), 0)
    assert parse_listen("[::1]:80").url == "http://[::1]:80/"
    for bad in ("", "127.0.0.1", "localhost:80", "1.2.3.4:65536", "1.2.3.4:-1", "::1:80x"):
        with pytest.raises(ConfigError, match="is not ADDRESS:PORT"):
            parse_listen(bad)


def test_only_loopback_goes_without_a_token() -> None:
    listen_rule(parse_listen("127.0.0.1:80"), None)
    listen_rule(parse_listen("[::1]:80"), None)
    for where in ("0.0.0.0:80", "[::]:80", "192.0.2.1:80", "10.244.1.0:80"):
        with pytest.raises(ConfigError) as exc:
            listen_rule(parse_listen(where), None)
        assert exc.value.hint is not None and "--token-file" in exc.value.hint
        listen_rule(parse_listen(where), TOKEN)


def test_allowed_hosts() -> None:
    assert allowed_hosts(parse_listen("127.0.0.1:80")) == frozenset({"127.0.0.1", "localhost"})
    assert allowed_hosts(parse_listen("192.0.2.1:80")) == frozenset({"192.0.2.1"})
    assert allowed_hosts(parse_listen("0.0.0.0:80")) is None
    access = Access("c", None, allowed_hosts(parse_listen("192.0.2.1:80")))
    assert access.host_ok("192.0.2.1") and not access.host_ok("localhost")
    assert not access.host_ok(None) and not access.host_ok("evil.example")
    assert Access("c", None, None).host_ok("anything.example")


def test_token_and_csrf() -> None:
    open_ = Access("csrf-value")
    assert open_.token_ok(None, None)
    access = Access("csrf-value", TOKEN)
    assert access.token_ok(f"Bearer {TOKEN}", None) and access.token_ok(None, TOKEN)
    assert access.token_ok("Bearer wrong", TOKEN)  # the cookie is right
    for header, cookie in ((None, None), ("Bearer", None), (TOKEN, None), (None, TOKEN[:-1])):
        assert not access.token_ok(header, cookie)
    assert access.csrf_ok("csrf-value")
    assert not access.csrf_ok(None) and not access.csrf_ok("") and not access.csrf_ok("csrf")


def test_read_token(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"\n  {TOKEN}\n\n")
    assert read_token(path) == TOKEN
    for bad in ("short", f"{TOKEN} {TOKEN}", "x" * 15, "", f"{TOKEN}\x00"):
        path.write_text(bad)
        with pytest.raises(ConfigError, match="at least 16"):
            read_token(path)
    path.write_bytes(b"\xff" * 20)
    with pytest.raises(ConfigError, match="cannot read"):
        read_token(path)
    with pytest.raises(ConfigError, match="cannot read"):
        read_token(tmp_path / "missing")
