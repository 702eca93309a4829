"""``--ip-masq``: the nftables ruleset, and (as root, in a private netns) that nft takes it."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from overlayd.dataplane.masq import TABLE, MasqTable, masq_ruleset
from overlayd.values.errors import KernelError
from tests.lab.netns import tool

ROOT = Path(__file__).resolve().parents[2]
NETWORK = IPv4Network("10.244.0.0/16")
SUBNET = IPv4Network("10.244.3.0/24")


class FakeNft:
    """One nftables table in memory: what the last script wrote, ``fail`` refuses scripts."""

    def __init__(self) -> None:
        self.listing: str | None = None
        self.scripts: list[str] = []
        self.fail = False

    def run(self, script: str) -> None:
        if self.fail:
            raise KernelError("nft failed: refused")
        self.scripts.append(script)
        self.listing = f"listing of {len(self.scripts)}"

    def read(self, family: str, table: str) -> str | None:
        assert (family, table) == ("ip", TABLE)
        return self.listing


def test_masq_table_is_written_once_while_nothing_changes() -> None:
    nft = FakeNft()
    table = MasqTable(nft.run, nft.read)
    assert table.apply(NETWORK, SUBNET)
    assert not table.apply(NETWORK, SUBNET)
    assert not table.apply(NETWORK, SUBNET)
    assert nft.scripts == [masq_ruleset(NETWORK, SUBNET)]


def test_masq_table_is_written_again_for_a_new_subnet() -> None:
    nft = FakeNft()
    table = MasqTable(nft.run, nft.read)
    other = IPv4Network("10.244.9.0/24")
    table.apply(NETWORK, SUBNET)
    assert table.apply(NETWORK, other)
    assert nft.scripts[-1] == masq_ruleset(NETWORK, other)


@pytest.mark.parametrize("listing", [None, "table ip overlayd { edited by someone }"])
def test_masq_table_removed_or_edited_is_written_again(listing: str | None) -> None:
    nft = FakeNft()
    table = MasqTable(nft.run, nft.read)
    table.apply(NETWORK, SUBNET)
    nft.listing = listing
    assert table.apply(NETWORK, SUBNET)
    assert len(nft.scripts) == 2
    assert not table.apply(NETWORK, SUBNET)


def test_masq_table_refused_is_written_at_the_next_apply() -> None:
    nft = FakeNft()
    table = MasqTable(nft.run, nft.read)
    table.apply(NETWORK, SUBNET)
    nft.fail = True
    with pytest.raises(KernelError):
        table.apply(NETWORK, IPv4Network("10.244.9.0/24"))
    nft.fail = False
    assert table.apply(NETWORK, SUBNET)


def test_ruleset_text() -> None:
    text = masq_ruleset(NETWORK, SUBNET)
    lines = [line.strip() for line in text.strip().splitlines()]
    # replaced as a whole: create-if-missing, delete, recreate in one transaction
    assert lines[0] == f"table ip {TABLE} {{}}"
    assert lines[1] == f"delete table ip {TABLE}"
    assert lines[2] == f"table ip {TABLE} {{"
    assert "type nat hook postrouting priority srcnat; policy accept;" in lines
    rules = [line for line in lines if line.startswith("ip ")]
    assert rules == [
        "ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return",
        "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
        "ip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 return",
        "ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random",
    ]
    assert text.count("{") == text.count("}")


def test_ruleset_uses_its_arguments() -> None:
    text = masq_ruleset(IPv4Network("172.20.0.0/14"), IPv4Network("172.21.4.0/26"))
    assert "10.244" not in text
    assert "ip saddr != 172.20.0.0/14 ip daddr 172.21.4.0/26 return" in text


# -- root: nft accepts it ---------------------------------------------------------------


def _have_root_tools() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("nft") is not None


@pytest.fixture
def netns() -> Iterator[str]:
    if not _have_root_tools():
        pytest.skip("needs root, ip and nft")
    name = f"ovut-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)


def _in_ns(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


def _apply(ns: str, network: IPv4Network, subnet: IPv4Network) -> None:
    proc = _in_ns(ns, *tool("masq", "apply", str(network), str(subnet)))
    assert proc.returncode == 0, proc.stderr


def _table(ns: str) -> str:
    proc = _in_ns(ns, "nft", "list", "table", "ip", TABLE)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.root
def test_nft_accepts_ruleset_and_reapply_is_idempotent(netns: str) -> None:
    _apply(netns, NETWORK, SUBNET)
    first = _table(netns)
    assert "masquerade" in first
    assert "ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return" in first
    assert "ip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 return" in first
    assert first.count("masquerade") == 2
    # applying again replaces, it does not add a second copy
    _apply(netns, NETWORK, SUBNET)
    assert _table(netns) == first
    # a new subnet replaces the old rule
    _apply(netns, NETWORK, IPv4Network("10.244.9.0/24"))
    third = _table(netns)
    assert "10.244.9.0/24" in third and "10.244.3.0/24" not in third
    assert third.count("masquerade") == 2
    # our table only: the namespace holds exactly one table
    tables = _in_ns(netns, "nft", "list", "tables").stdout.split("\n")
    assert [t for t in tables if t.strip()] == [f"table ip {TABLE}"]


@pytest.mark.root
def test_remove_masq(netns: str) -> None:
    # removing when absent is fine too
    proc = _in_ns(netns, *tool("masq", "remove"))
    assert proc.returncode == 0, proc.stderr
    _apply(netns, NETWORK, SUBNET)
    proc = _in_ns(netns, *tool("masq", "remove"))
    assert proc.returncode == 0, proc.stderr
    listed = _in_ns(netns, "nft", "list", "tables").stdout
    assert f"table ip {TABLE}" not in listed
