"""The node's state dir: node id, VTEP MAC and remembered subnet survive restarts."""

from __future__ import annotations

import os
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from overlayd.disk.state_dir import StateDir
from overlayd.values.errors import ConfigError
from overlayd.values.kernel_state import MacAddress


def test_identity_is_created_and_persisted(tmp_path: Path) -> None:
    path = tmp_path / "state" / "overlayd"
    first = StateDir(path).identity()
    assert (path.stat().st_mode & 0o777) == 0o700
    assert len(first.node_id) == 32 and int(first.node_id, 16) >= 0
    # locally administered unicast MAC
    assert first.vtep_mac.packed[0] & 0x03 == 0x02
    assert (path / "node-id").read_text().strip() == first.node_id
    assert MacAddress.parse((path / "vtep-mac").read_text()) == first.vtep_mac
    # a new instance (a restart) reads the same identity
    assert StateDir(path).identity() == first
    assert StateDir(path).identity() == first


def test_different_state_dirs_are_different_nodes(tmp_path: Path) -> None:
    a = StateDir(tmp_path / "a").identity()
    b = StateDir(tmp_path / "b").identity()
    assert a.node_id != b.node_id
    assert a.vtep_mac != b.vtep_mac


def test_existing_files_are_used(tmp_path: Path) -> None:
    (tmp_path / "node-id").write_text("  my-node-id \n")
    (tmp_path / "vtep-mac").write_text("0A-1B-2C-3D-4E-5F\n")
    ident = StateDir(tmp_path).identity()
    assert ident.node_id == "my-node-id"
    assert ident.vtep_mac == MacAddress("0a:1b:2c:3d:4e:5f")


@pytest.mark.parametrize("damage", ["garbage\n", "", "0a:1b:2c\n", "\x00\x01\x02"])
def test_damaged_mac_file_is_repaired(tmp_path: Path, damage: str) -> None:
    sd = StateDir(tmp_path)
    original = sd.identity()
    (tmp_path / "vtep-mac").write_text(damage)
    repaired = StateDir(tmp_path).identity()
    assert repaired.node_id == original.node_id  # the node id is untouched
    assert isinstance(repaired.vtep_mac, MacAddress)
    # the repair is persisted: the next start sees the same new MAC
    assert MacAddress.parse((tmp_path / "vtep-mac").read_text()) == repaired.vtep_mac
    assert StateDir(tmp_path).identity() == repaired


def test_empty_node_id_file_gets_a_new_id(tmp_path: Path) -> None:
    (tmp_path / "node-id").write_text("\n")
    ident = StateDir(tmp_path).identity()
    assert ident.node_id
    assert StateDir(tmp_path).identity().node_id == ident.node_id


def test_no_temp_files_left(tmp_path: Path) -> None:
    sd = StateDir(tmp_path)
    sd.identity()
    for n in range(20):
        sd.remember_subnet(IPv4Network(f"10.244.{n}.0/24"))
    assert sorted(os.listdir(tmp_path)) == ["node-id", "subnet", "vtep-mac"]


def test_remembered_subnet(tmp_path: Path) -> None:
    path = tmp_path / "fresh"
    sd = StateDir(path)
    assert sd.remembered_subnet() is None  # nothing yet (and the dir does not exist)
    sd.remember_subnet(IPv4Network("10.244.7.0/24"))
    assert StateDir(path).remembered_subnet() == IPv4Network("10.244.7.0/24")
    sd.remember_subnet(IPv4Network("10.1.0.32/28"))
    assert StateDir(path).remembered_subnet() == IPv4Network("10.1.0.32/28")


@pytest.mark.parametrize("text", ["", "nonsense", "10.244.7.1/24", "10.244.7.0/33"])
def test_damaged_remembered_subnet_is_ignored(tmp_path: Path, text: str) -> None:
    (tmp_path / "subnet").write_text(text)
    assert StateDir(tmp_path).remembered_subnet() is None


def test_unusable_state_dir_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot create state dir"):
        StateDir(blocker / "sub").identity()


def test_binary_garbage_mac_file_is_repaired(tmp_path: Path) -> None:
    StateDir(tmp_path).identity()
    (tmp_path / "vtep-mac").write_bytes(b"\xff\xfe\x00garbage")
    repaired = StateDir(tmp_path).identity()
    assert StateDir(tmp_path).identity() == repaired
