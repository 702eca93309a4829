"""``overlayctl network init`` defaults to vxlan+wireguard; a config without Backend is vxlan.

Run against a real etcd on 127.0.0.1 (the ``etcd_server`` fixture; no root needed).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from overlayd.cli.ctl import main
from overlayd.config import VXLAN, VXLAN_WIREGUARD, parse_config
from tests.lab.etcd import ETCD, ETCDCTL, EtcdServer

pytestmark = pytest.mark.skipif(not Path(ETCD).exists(), reason="needs etcd")


def ctl(server: EtcdServer, *args: str) -> Result:
    result = CliRunner().invoke(main, ["--etcd-endpoints", server.endpoint, *args])
    assert result.exit_code == 0, result.output
    return result


def test_init_defaults_to_vxlan_inside_sites_and_wireguard_between(etcd_server: EtcdServer) -> None:
    written = ctl(etcd_server, "network", "init", "--network", "10.244.0.0/16")
    assert json.loads(written.stdout)["Backend"]["Type"] == VXLAN_WIREGUARD
    assert written.stderr == ""  # no plain-VXLAN note
    shown = parse_config(ctl(etcd_server, "network", "show").stdout)
    assert shown.backend.type == VXLAN_WIREGUARD
    assert shown.backend.uses_vxlan and shown.backend.uses_wireguard


def test_init_backend_vxlan_still_works_and_says_it_does_not_encrypt(
    etcd_server: EtcdServer,
) -> None:
    init = ("network", "init", "--network", "10.244.0.0/16")
    written = ctl(etcd_server, *init, "--backend", "vxlan")
    assert json.loads(written.stdout)["Backend"]["Type"] == VXLAN
    assert "neither encrypts nor authenticates traffic between sites" in written.stderr
    assert "--backend vxlan+wireguard" in written.stderr
    assert parse_config(ctl(etcd_server, "network", "show").stdout).backend.type == VXLAN


def test_a_flannel_config_without_backend_keeps_meaning_vxlan(etcd_server: EtcdServer) -> None:
    """Read as-is: a config someone else wrote (flannel) keeps flannel's default."""
    flannel = '{"Network": "10.244.0.0/16"}'
    put = [ETCDCTL, f"--endpoints={etcd_server.url}", "put", "/overlayd/network/config", flannel]
    subprocess.run(put, check=True, capture_output=True)
    assert parse_config(ctl(etcd_server, "network", "show").stdout).backend.type == VXLAN
    assert parse_config('{"Network": "10.244.0.0/16", "Backend": {"VNI": 2}}').backend.type == VXLAN
