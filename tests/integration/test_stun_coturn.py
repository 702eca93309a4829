"""The STUN client against a real STUN server, coturn's ``turnserver`` (needs root).

World (namespaces ``<prefix>cli``, ``<prefix>rtr``, ``<prefix>stun``)::

    cli 10.0.0.2 --- 10.0.0.1 rtr 203.0.113.1 --- 203.0.113.10 stun (turnserver --stun-only)
                     (masquerades what leaves by its wan)

The client (tests/lab/tools/stun_query.py, overlayd.discovery.stun in the cli namespace)
must learn the router's public address, and the port its own socket's datagrams leave by.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from tests.lab.netns import Namespace, create_namespace, tool, veth
from tests.lab.services import start_stun, turnserver_available

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not turnserver_available(), reason="needs coturn (scripts/setup)"),
]

ROUTER_PUBLIC = IPv4Address("203.0.113.1")
STUN_IP = IPv4Address("203.0.113.10")
STUN_PORT = 3478
MASQUERADE = """
table ip lab {
  chain post {
    type nat hook postrouting priority srcnat;
    oifname "wan" masquerade
  }
}
"""


def build(prefix: str) -> tuple[Namespace, Namespace]:
    """The three namespaces, wired and addressed; returns (client, stun)."""
    cli, rtr, stun = (create_namespace(f"{prefix}{n}") for n in ("cli", "rtr", "stun"))
    veth(cli, "eth0", rtr, "lan")
    veth(rtr, "wan", stun, "eth0")
    cli.add_address("eth0", IPv4Interface("10.0.0.2/24"))
    cli.add_route(None, IPv4Address("10.0.0.1"))
    rtr.add_address("lan", IPv4Interface("10.0.0.1/24"))
    rtr.add_address("wan", IPv4Interface(f"{ROUTER_PUBLIC}/24"))
    rtr.set_forwarding()
    rtr.nft(MASQUERADE)
    stun.add_address("eth0", IPv4Interface(f"{STUN_IP}/24"))  # no route back to 10.0.0.0/24
    return cli, stun


@pytest.fixture
def world(prefix: str, tmp_path: Path) -> Iterator[Namespace]:
    """The client namespace, with turnserver running in the stun namespace."""
    cli, stun = build(prefix)
    server = start_stun(stun, STUN_IP, tmp_path, STUN_PORT)
    try:
        yield cli
    finally:
        server.terminate()  # by pid; the prefix fixture deletes the namespaces
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def query(cli: Namespace, local_port: int = 0) -> dict[str, object]:
    argv = tool("stun_query", str(STUN_IP), str(STUN_PORT), str(local_port))
    out = cli.run(argv, check=False, timeout=20).stdout
    seen: dict[str, object] = json.loads(out)
    return seen


def test_behind_masquerade_stun_sees_the_routers_public_address(world: Namespace) -> None:
    seen = query(world, 41641)
    assert seen == {"port": 41641, "address": str(ROUTER_PUBLIC), "mapped_port": 41641}, seen
    # Linux masquerade keeps a source port while it is free: what hole punching relies on.


def test_any_port_keeps_its_number_through_masquerade(world: Namespace) -> None:
    first, second = query(world), query(world)
    assert first["address"] == second["address"] == str(ROUTER_PUBLIC)
    assert first["mapped_port"] == first["port"] and second["mapped_port"] == second["port"]
