"""wireguard-go supervision without root: exit watching and start failures, with stand-in
programs instead of wireguard-go."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd.dataplane.netlink.link import Links
from overlayd.dataplane.wireguard.device_link import DeviceLink
from overlayd.dataplane.wireguard.userspace import WireGuardGo, _ExitWatcher
from overlayd.values.errors import WireGuardError
from overlayd.values.keys import PrivateKey
from overlayd.values.wireguard import WgDeviceConfig


@pytest.fixture
def device() -> Iterator[DeviceLink]:
    """The (absent) device ``ovwgtest0`` in this namespace; reading links needs no root."""
    with Links() as links:
        yield DeviceLink(links, "ovwgtest0")


def test_exit_watcher_fires_on_exit() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    fired = threading.Event()
    seen: list[int] = []

    def callback(pid: int) -> None:
        seen.append(pid)
        fired.set()

    watcher = _ExitWatcher(proc.pid, callback)
    proc.kill()
    assert fired.wait(5)
    assert seen == [proc.pid]
    proc.wait()
    watcher.cancel()  # after the fact: harmless


def test_exit_watcher_cancel_does_not_fire() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    fired: list[int] = []
    watcher = _ExitWatcher(proc.pid, fired.append)
    watcher.cancel()
    proc.kill()
    proc.wait()
    assert fired == []


def test_start_failure_names_the_log(tmp_path: Path, device: DeviceLink) -> None:
    false = shutil.which("false")
    assert false is not None
    log = tmp_path / "wg.log"
    driver = WireGuardGo(device, binary=false, socket_dir=tmp_path, log_path=log)
    with pytest.raises(WireGuardError, match="exited with status 1 on start") as info:
        driver.ensure_device(WgDeviceConfig(PrivateKey.generate()))
    assert str(log) in info.value.hint
    assert driver.starts == 0


def test_start_timeout_kills_the_process(tmp_path: Path, device: DeviceLink) -> None:
    script = tmp_path / "silent"
    script.write_text("#!/bin/sh\nexec sleep 30\n")
    script.chmod(0o755)
    driver = WireGuardGo(device, binary=str(script), socket_dir=tmp_path, start_timeout=0.3)
    with pytest.raises(WireGuardError, match="did not open its UAPI socket"):
        driver.ensure_device(WgDeviceConfig(PrivateKey.generate()))


def test_missing_binary(tmp_path: Path, device: DeviceLink) -> None:
    driver = WireGuardGo(device, binary=str(tmp_path / "nope"), socket_dir=tmp_path)
    with pytest.raises(WireGuardError, match="cannot run"):
        driver.ensure_device(WgDeviceConfig(PrivateKey.generate()))
    assert not driver.running()
