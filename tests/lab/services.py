"""The address-discovery services a test world may run, as processes in its namespaces.

* A cloud's instance metadata API (``tests/lab/tools/metadata_server.py``) on port 80 of
  the provider's well-known address (``METADATA_ADDRESSES``), answering each client its own
  public address by the client's source address.
* A STUN server: coturn's ``turnserver --stun-only`` (Debian package ``coturn``, installed
  by scripts/setup with its system service off).

This module starts the processes and waits until they serve; it neither adds the
addresses they listen on (the world's builder does, where they belong in its topology)
nor stops them: the caller kills them by PID (``World.helpers``).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from tests.lab.netns import Namespace, tool

METADATA_ADDRESSES: Mapping[str, IPv4Address] = {
    "aws": IPv4Address("169.254.169.254"),
    "gcp": IPv4Address("169.254.169.254"),
    "azure": IPv4Address("169.254.169.254"),
    "alibaba": IPv4Address("100.100.100.200"),
    "tencent": IPv4Address("169.254.0.23"),
}
"""Where each provider's metadata service answers (what overlayd.discovery.metadata asks)."""
METADATA_PORT = 80
STUN_PORT = 3478
"""The STUN port of RFC 5389."""
START_TIMEOUT = 10.0
"""Seconds a service may take to start serving."""


@dataclass(frozen=True)
class MetadataService:
    """One site's metadata API: ``provider``'s, at ``address:port`` in namespace ``ns``."""

    site: str
    provider: str
    ns: Namespace
    address: IPv4Address
    port: int = METADATA_PORT


def start_metadata(
    service: MetadataService, answers: Mapping[IPv4Address, IPv4Address], log_file: Path
) -> subprocess.Popen[str]:
    """Serve ``service``, answering each client address in ``answers`` its public address
    (any other client: none); returns once it listens. Its log goes to ``log_file``."""
    answer = ",".join(f"{client}={public}" for client, public in sorted(answers.items()))
    argv = tool(
        "metadata_server", service.provider, str(service.address), str(service.port), answer
    )
    with open(log_file, "a") as log:
        proc = service.ns.popen(argv, stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdout is not None
    if not proc.stdout.readline().startswith("ready"):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"metadata server in {service.ns.name} did not start: {log_file}")
    return proc


def turnserver_available() -> bool:
    """Whether coturn's ``turnserver`` is installed (scripts/setup)."""
    return shutil.which("turnserver") is not None


def start_stun(
    ns: Namespace, address: IPv4Address, workdir: Path, port: int = STUN_PORT
) -> subprocess.Popen[str]:
    """coturn as a plain STUN server on ``address:port`` (UDP) in ``ns``; returns once it
    listens. Its log and pid file go to ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        "turnserver", "-n", "--stun-only", "--no-cli", "--no-tls", "--no-dtls",
        "--listening-ip", str(address), "--listening-port", str(port),
        "--log-file", str(workdir / "turnserver.log"), "--simple-log", "--no-stdout-log",
        "--pidfile", str(workdir / "turnserver.pid"),
    ]  # fmt: skip
    proc = ns.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + START_TIMEOUT
    while f"{address}:{port}" not in ns.sh("ss -Hlun"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            raise RuntimeError(f"turnserver in {ns.name} did not listen on {address}:{port}: {err}")
        time.sleep(0.05)
    return proc
