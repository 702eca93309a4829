"""Helpers for running the ``overlay`` plugin executable the way a runtime does."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from overlayd.disk.subnet_file import SubnetFile, write_subnet_file

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "cni" / "overlay"
SYSTEM_CNI_BIN = Path("/usr/lib/cni")
NETWORK = IPv4Network("10.244.0.0/16")
SUBNET = IPv4Interface("10.244.7.1/24")


@dataclass(frozen=True)
class Reply:
    """What the plugin printed and returned."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


def run_plugin(
    command: str,
    stdin: Mapping[str, Any] | bytes,
    env: Mapping[str, str] | None = None,
    *,
    netns: str | None = None,
    plugin: Path = PLUGIN,
) -> Reply:
    """Run the plugin with ``CNI_COMMAND=command`` plus ``env``, inside the network
    namespace ``netns`` (the runtime's, i.e. the host side) if given."""
    data = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command}
    full_env.update(env or {})
    argv = [str(plugin)]
    if netns is not None:
        argv = ["nsenter", f"--net=/run/netns/{netns}", *argv]
    proc = subprocess.run(argv, input=data, env=full_env, capture_output=True, timeout=60)
    return Reply(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def assert_cni_error(reply: Reply, code: int | None, version: str | None = None) -> dict[str, Any]:
    """The reply is one CNI error object (with ``code`` unless that is ``None``), and the
    exit status is non-zero."""
    assert reply.exit_code != 0, reply
    body = reply.json
    assert isinstance(body, dict), reply
    assert set(body) <= {"cniVersion", "code", "msg", "details"}, body
    assert isinstance(body["code"], int), body
    if code is not None:
        assert body["code"] == code, body
    assert isinstance(body["msg"], str) and body["msg"], body
    assert isinstance(body["cniVersion"], str), body
    if version is not None:
        assert body["cniVersion"] == version, body
    assert "Traceback" not in reply.stdout + reply.stderr, reply
    return body


@dataclass
class Node:
    """One test node's files: its subnet file, the plugin cache and the lease directory."""

    root: Path
    network_name: str = field(default_factory=lambda: f"ovcni-{secrets.token_hex(3)}")

    @property
    def subnet_file(self) -> Path:
        return self.root / "run" / "subnet.env"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def lease_dir(self) -> Path:
        return self.root / "leases"

    def write_subnet(
        self,
        subnet: IPv4Interface = SUBNET,
        *,
        network: IPv4Network = NETWORK,
        mtu: int = 1400,
        ipmasq: bool = True,
    ) -> None:
        write_subnet_file(self.subnet_file, SubnetFile(network, subnet, mtu, ipmasq))

    def netconf(self, version: str, **extra: Any) -> dict[str, Any]:
        """The plugin's netconf as a runtime passes it (name/cniVersion from the list)."""
        conf: dict[str, Any] = {
            "cniVersion": version,
            "name": self.network_name,
            "type": "overlay",
            "subnetFile": str(self.subnet_file),
            "dataDir": str(self.cache_dir),
            "delegate": {"ipam": {"dataDir": str(self.lease_dir)}},
        }
        conf.update(extra)
        return conf

    def cache_entries(self) -> list[str]:
        directory = self.cache_dir / self.network_name
        return sorted(os.listdir(directory)) if directory.exists() else []

    def leases(self) -> list[str]:
        """host-local's reservation files (one per address; named after the address)."""
        directory = self.lease_dir / self.network_name
        if not directory.exists():
            return []
        return sorted(n for n in os.listdir(directory) if n[0].isdigit())


def attach_env(container_id: str, netns: str | None, ifname: str = "eth0") -> dict[str, str]:
    env = {
        "CNI_CONTAINERID": container_id,
        "CNI_IFNAME": ifname,
        "CNI_PATH": str(SYSTEM_CNI_BIN),
    }
    if netns is not None:
        env["CNI_NETNS"] = f"/run/netns/{netns}"
    return env


def ip(*args: str, netns: str | None = None) -> str:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@contextmanager
def namespaces(*roles: str) -> Iterator[dict[str, str]]:
    """Fresh network namespaces ``ovcni-<role>-<random>`` (loopback up), deleted on exit
    whatever happens."""
    tag = secrets.token_hex(3)
    names = {role: f"ovcni-{role}-{tag}" for role in roles}
    created = []
    try:
        for name in names.values():
            subprocess.run(["ip", "netns", "add", name], check=True)
            created.append(name)
            ip("link", "set", "lo", "up", netns=name)
        yield names
    finally:
        for name in created:
            subprocess.run(["ip", "netns", "del", name], check=False)
