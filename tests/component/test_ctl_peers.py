"""``overlayctl peers`` against a tiny HTTP server on 127.0.0.1 standing in for a daemon's
health port: empty, one and many peers, odd documents, and no daemon at all."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from overlayd.cli.common import EXIT_INTERNAL
from overlayd.cli.context import CtlContext
from overlayd.cli.ctl import main
from tests.component.ctl import NOW, Ctl
from tests.lab.etcd import free_ports

HEADER = ["NODE", "SUBNET", "SITE", "ADDRESS", "PATH", "RTT", "LAST", "PROBE", "REASON"]


class FakeDaemon:
    """Serves ``body`` (bytes) as ``/peers`` with ``status``."""

    def __init__(self) -> None:
        self.body = b'{"peers": []}'
        self.status = 200
        self.status_body: bytes | None = None  # /status (None: 404, as before discovery)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code, body = (owner.status, owner.body) if self.path == "/peers" else (404, b"")
                if self.path == "/status" and owner.status_body is not None:
                    code, body = 200, owner.status_body
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def peers(self, *entries: dict[str, Any]) -> None:
        self.body = json.dumps({"peers": list(entries)}).encode()


@pytest.fixture
def daemon() -> Iterator[FakeDaemon]:
    fake = FakeDaemon()
    thread = threading.Thread(target=fake.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()
        thread.join(5)


def peer(node: str, n: int, **fields: Any) -> dict[str, Any]:
    """One entry as the daemon's /peers sends it (``PeerReport.to_json``,
    overlayd/agent/path_keeper.py)."""
    return {
        "node": node,
        "subnet": f"10.244.{n}.0/24",
        "site": "eu",
        "address": f"192.0.2.{n}",
        "kind": "public",
        "reason": "verified",
        "rtt_ms": 1.25,
        "last_success": NOW - 2.0,
        "verified": [f"192.0.2.{n}"],
        "via": None,
        **fields,
    }


def rows(ctl: Ctl, daemon: FakeDaemon, *args: str) -> list[list[str]]:
    out = ctl("peers", "--daemon", daemon.url, *args).stdout
    return [line.split() for line in out.splitlines()]


def test_no_peers_prints_the_header(daemon: FakeDaemon) -> None:
    ctl = Ctl()
    assert rows(ctl, daemon) == [HEADER]
    assert json.loads(ctl("peers", "--daemon", daemon.url, "-o", "json").stdout) == []


def test_one_peer(daemon: FakeDaemon) -> None:
    daemon.peers(peer("b", 2))
    assert rows(Ctl(), daemon) == [
        HEADER,
        ["b", "10.244.2.0/24", "eu", "192.0.2.2", "public", "1.25ms", "2.0s", "ago", "verified"],
    ]


def test_many_peers_filter_and_json(daemon: FakeDaemon) -> None:
    daemon.peers(
        peer("b", 2),
        peer("c", 3, via="gw-a", rtt_ms=None, last_success=None, reason="via gateway"),
        peer("d", 4, kind="private", site="us"),
    )
    ctl = Ctl()
    table = rows(ctl, daemon)
    assert [r[0] for r in table[1:]] == ["b", "c", "d"]
    assert table[2][4:9] == ["via", "gateway", "gw-a", "-", "-"]
    assert [r[0] for r in rows(ctl, daemon, "c")[1:]] == ["c"]
    assert [r[0] for r in rows(ctl, daemon, "10.244.4.0/24")[1:]] == ["d"]
    doc = json.loads(ctl("peers", "--daemon", daemon.url, "-o", "json").stdout)
    assert [p["node"] for p in doc] == ["b", "c", "d"]
    missing = ctl("peers", "--daemon", daemon.url, "zz", code=1)
    assert "no peer 'zz'" in missing.stderr


def test_entries_with_missing_or_odd_fields_show_dashes(daemon: FakeDaemon) -> None:
    daemon.peers({"node": "x"}, {"node": "y", "rtt_ms": "fast", "last_success": True,
                                 "site": {"nested": 1}})  # fmt: skip
    table = rows(Ctl(), daemon)
    assert table[1] == ["x", "-", "-", "-", "-", "-", "-", "-"]
    assert table[2] == ["y", "-", "-", "-", "-", "-", "-", "-"]


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"peers": 5}', b'{"peers": [1, 2]}', b'{"other": []}', b"\xff"],
)
def test_malformed_documents_are_one_error(daemon: FakeDaemon, body: bytes) -> None:
    daemon.body = body
    result = Ctl()("peers", "--daemon", daemon.url, code=1)
    assert result.stderr.startswith("error: ")
    assert daemon.url in result.stderr


def test_daemon_not_started_yet(daemon: FakeDaemon) -> None:
    daemon.status, daemon.body = 503, b'{"error": "not started"}'
    result = Ctl()("peers", "--daemon", daemon.url, code=1)
    assert "503" in result.stderr and "is overlayd running there?" in result.stderr


def test_no_daemon_listening() -> None:
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    result = Ctl()("peers", "--daemon", url, code=1)
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"error: cannot read {url}/peers: ")
    assert lines[1] == "hint: is overlayd running there? see --daemon"


@pytest.mark.parametrize(
    "url",
    ["nope", "127.0.0.1:10256", "ftp://127.0.0.1:21", "file:///etc", "http://", "http://h:99999",
     "http://h:0", "http://h:port", "http://[::1"],
)  # fmt: skip
def test_a_bad_daemon_url_is_a_usage_error(url: str) -> None:
    """Checked when the flags are parsed: nothing is fetched (``file://`` would read a file)."""
    result = Ctl()("peers", "--daemon", url, code=2)
    assert "--daemon" in result.stderr and repr(url) in result.stderr


def test_a_bug_is_one_line_exit_70(daemon: FakeDaemon) -> None:
    """``peers`` reads no store: the bug here is a clock that fails."""

    def broken_clock() -> float:
        raise ZeroDivisionError("clock")

    daemon.peers(peer("b", 2))
    obj = CtlContext(clock=broken_clock)
    result = CliRunner().invoke(main, ["peers", "--daemon", daemon.url], obj=obj)
    assert result.exit_code == EXIT_INTERNAL, result.output
    assert result.stderr == "error: internal error: ZeroDivisionError: clock; rerun with --debug\n"


def test_reads_no_tls_file(daemon: FakeDaemon, tmp_path: Path) -> None:
    """The etcd flags are checked, but ``peers`` never opens the store nor its files."""
    args = ["--etcd-cafile", str(tmp_path / "missing.pem"), "peers", "--daemon", daemon.url]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output


def test_a_peer_with_no_path_and_what_this_node_learned(daemon: FakeDaemon) -> None:
    """Two clouds behind NAT, nothing learned: the peer is listed with why it has no path,
    and the last line says what this node learned of its own public address."""
    why = "no path: it publishes no public address, only addresses private to site b"
    daemon.peers({"node": "b1", "subnet": "10.244.9.0/24", "site": "b", "address": None,
                  "kind": "none", "reason": why})  # fmt: skip
    learned = "cloud metadata: off; STUN: no --stun-server given"
    daemon.status_body = json.dumps({"public_ips": [], "discovery": learned}).encode()
    result = CliRunner().invoke(main, ["peers", "--daemon", daemon.url])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "b1" in lines[1] and "none" in lines[1] and why[:40] in lines[1]
    assert lines[-1] == f"this node's public address: none confirmed ({learned})"
    daemon.status_body = json.dumps({"public_ips": ["203.0.113.7"], "discovery": None}).encode()
    result = CliRunner().invoke(main, ["peers", "--daemon", daemon.url])
    assert "this node's public address" not in result.output  # given with --public-ip
