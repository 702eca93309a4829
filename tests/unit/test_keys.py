"""Node key: persistence, permissions, formats, shared-secret derivation."""

from __future__ import annotations

import base64
import logging
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from overlayd.disk.node_key import KEY_FILE, NodeKey, NodeKeyError
from overlayd.values.keys import PrivateKey, PublicKey, derive_shared


def test_created_with_mode_0600_and_reloaded(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = NodeKey.load_or_create(state)
    path = state / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    second = NodeKey.load_or_create(state)
    assert second.public == first.public
    assert second.private == first.private
    # no temporary file is left behind
    assert [p.name for p in state.iterdir()] == [KEY_FILE]


def test_created_0600_even_with_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        NodeKey.load_or_create(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600


def test_file_is_wg_genkey_format(tmp_path: Path) -> None:
    key = NodeKey.load_or_create(tmp_path)
    text = (tmp_path / KEY_FILE).read_text()
    assert text.endswith("\n")
    assert len(base64.b64decode(text.strip())) == 32
    if shutil.which("wg"):
        out = subprocess.run(["wg", "pubkey"], input=text, capture_output=True, text=True)
        assert out.stdout.strip() == key.public.base64


def test_loads_existing_wg_key(tmp_path: Path) -> None:
    private = PrivateKey.generate()
    path = tmp_path / KEY_FILE
    path.write_text(private.reveal_base64() + "\n")
    path.chmod(0o600)
    assert NodeKey.load_or_create(tmp_path).public == private.public_key()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_group_or_world_access_is_refused(tmp_path: Path, mode: int) -> None:
    NodeKey.load_or_create(tmp_path)
    path = tmp_path / KEY_FILE
    path.chmod(mode)
    with pytest.raises(NodeKeyError, match=f"mode {mode:04o}") as info:
        NodeKey.load_or_create(tmp_path)
    assert "chmod 600" in info.value.hint


def test_repair_narrows_mode(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = NodeKey.load_or_create(tmp_path)
    path = tmp_path / KEY_FILE
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        again = NodeKey.load_or_create(tmp_path, repair=True)
    assert again.public == first.public
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "narrowed to 0600" in caplog.text


def test_symlink_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text(PrivateKey.generate().reveal_base64())
    elsewhere.chmod(0o600)
    state = tmp_path / "state"
    state.mkdir()
    (state / KEY_FILE).symlink_to(elsewhere)
    with pytest.raises(NodeKeyError, match="cannot open"):
        NodeKey.load_or_create(state)


def test_damaged_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE
    path.write_text("not a key\n")
    path.chmod(0o600)
    with pytest.raises(NodeKeyError, match="damaged"):
        NodeKey.load_or_create(tmp_path)
    path.write_text(base64.b64encode(b"short").decode())
    with pytest.raises(NodeKeyError, match="damaged"):
        NodeKey.load_or_create(tmp_path)


def test_secret_never_in_repr_or_str(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        key = NodeKey.load_or_create(tmp_path)
    secret_forms = (key.private.reveal_base64(), key.private.reveal_hex(), repr(key.private.raw))
    shown = " ".join((repr(key), str(key), repr(key.private), str(key.private), caplog.text))
    for form in secret_forms:
        assert form not in shown
    assert key.public.base64 in caplog.text  # the public half is logged on creation


def test_public_key_formats() -> None:
    public = PrivateKey.generate().public_key()
    assert PublicKey.from_base64(public.base64) == public
    assert PublicKey.from_hex(public.hex) == public
    assert str(public) == public.base64
    assert len(public.raw) == 32
    with pytest.raises(ValueError):
        PublicKey(b"\x01" * 31)
    with pytest.raises(ValueError):
        PublicKey.from_base64("!!!")


def test_shared_secret_is_symmetric_and_bound_to_context() -> None:
    alice, bob, carol = (PrivateKey.generate() for _ in range(3))
    ab = derive_shared(alice, bob.public_key(), b"overlayd probe v1")
    ba = derive_shared(bob, alice.public_key(), b"overlayd probe v1")
    assert ab == ba
    assert len(ab) == 32
    assert derive_shared(alice, bob.public_key(), b"other use") != ab
    assert derive_shared(alice, carol.public_key(), b"overlayd probe v1") != ab


def test_node_key_derive_shared(tmp_path: Path) -> None:
    node = NodeKey.load_or_create(tmp_path)
    peer = PrivateKey.generate()
    assert node.derive_shared(peer.public_key(), b"x") == derive_shared(peer, node.public, b"x")


def test_low_order_public_key_is_rejected() -> None:
    with pytest.raises(ValueError, match="low-order"):
        derive_shared(PrivateKey.generate(), PublicKey(bytes(32)), b"ctx")
