"""``overlayctl network init`` defaults to vxlan+wireguard; a config without Backend is vxlan;
``overlayctl plan`` shows the WireGuard side of the wireguard backends.

Run against a real etcd on 127.0.0.1 (the ``etcd_server`` fixture; no root needed).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from overlayd.cli.ctl import main
from overlayd.values.config import VXLAN, VXLAN_WIREGUARD, parse_config
from overlayd.values.lease import LeaseRecord, subnet_key_name
from tests.builders import site_lease
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


# -- overlayctl plan follows the backend --------------------------------------------------


def lease(n: int, site: str, public: str | None = None) -> LeaseRecord:
    """Node ``n`` in ``site``: subnet 10.244.n.0/24, private 10.0.0.n, a WireGuard key."""
    return site_lease(n, site, VXLAN_WIREGUARD, public)


def test_plan_puts_other_sites_on_wireguard(etcd_server: EtcdServer) -> None:
    ctl(etcd_server, "network", "init", "--network", "10.244.0.0/16")
    for record in (lease(1, "a"), lease(2, "a"), lease(3, "b", "203.0.113.3")):
        key = f"/overlayd/network/subnets/{subnet_key_name(record.subnet)}"
        put = [ETCDCTL, f"--endpoints={etcd_server.url}", "put", key, record.to_json()]
        subprocess.run(put, check=True, capture_output=True)
    text = ctl(etcd_server, "plan", "--node", "node1").stdout
    assert "backend vxlan+wireguard: 2 peers" in text
    assert "fdb 02:00:00:00:00:02 dst 10.0.0.2 self permanent" in text  # same site: VXLAN
    vxlan_lines = [line for line in text.splitlines() if not line.startswith("wireguard ")]
    assert not [line for line in vxlan_lines if "10.244.3.0" in line or ":03 " in line]
    assert "wireguard peer 10.244.3.0/24 key " in text
    assert "endpoint 203.0.113.3:51820 allowed-ips 10.244.3.0/24" in text
    assert "wireguard route 10.244.3.0/24 via 10.244.3.0 onlink" in text
    found = json.loads(ctl(etcd_server, "plan", "--node", "node1", "-o", "json").stdout)
    assert [f["dst"] for f in found["fdb"]] == ["10.0.0.2"]
    assert [p["subnet"] for p in found["wireguard"]["peers"]] == ["10.244.3.0/24"]
    assert found["wireguard"]["peers"][0]["endpoint"] == "203.0.113.3:51820"
    assert found["skipped"] == []
