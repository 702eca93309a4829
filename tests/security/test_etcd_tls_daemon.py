"""The daemon against a TLS-only etcd, both in one network namespace (needs root).

Good certificates: the daemon leases a subnet. A certificate problem at start: the daemon
exits 2 within seconds with one clear message (no retry loop, no traceback, no gRPC lines).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Interface
from pathlib import Path

import pytest

from tests.lab.certs import Pki, make_pki, write_key
from tests.lab.etcd import GRPC_NOISE, EtcdServer, EtcdTls
from tests.lab.netns import Namespace, create_namespace, veth

pytestmark = pytest.mark.root

BIN = Path(sys.executable).parent
UNDERLAY = IPv4Interface("10.93.0.1/24")
EXIT_BOUND = 20.0  # seconds; generous for a busy machine, but a retry loop never ends


@dataclass(frozen=True)
class Lab:
    ns: Namespace
    pki: Pki
    etcd: EtcdServer
    workdir: Path

    def flags(self, *, ca: Path | None = None, key: Path | None = None) -> list[str]:
        return [
            "--etcd-endpoints", self.etcd.url,
            "--etcd-cafile", str(ca or self.pki.ca.cert_file),
            "--etcd-certfile", str(self.pki.client.cert),
            "--etcd-keyfile", str(key or self.pki.client.key),
        ]  # fmt: skip

    def overlayd(self, name: str, flags: list[str]) -> subprocess.Popen[bytes]:
        home = self.workdir / name
        home.mkdir()
        argv = [
            str(BIN / "overlayd"), *flags,
            "--node-name", name,
            "--iface", "d0",
            "--public-ip", str(UNDERLAY.ip),
            "--healthz-port", "0",
            "--state-dir", str(home / "state"),
            "--subnet-file", str(home / "subnet.env"),
        ]  # fmt: skip
        with open(home / "log", "wb") as log:
            return self.ns.popen(argv, stdout=log, stderr=log, start_new_session=True)

    def log(self, name: str) -> str:
        return (self.workdir / name / "log").read_text(errors="replace")


@pytest.fixture
def lab(prefix: str, tmp_path: Path) -> Iterator[Lab]:
    ns = create_namespace(f"{prefix}tls")
    veth(ns, "d0", create_namespace(f"{prefix}lan"), "d0")  # an underlay link (no dummy module)
    ns.add_address("d0", UNDERLAY)
    ns.link_up("d0")
    pki = make_pki(tmp_path / "pki")
    tls = EtcdTls(pki.server, pki.ca.cert_file, pki.ca.cert_file, pki.client)
    etcd = EtcdServer(tmp_path / "etcd", namespace=ns, tls=tls)
    with etcd:
        lab = Lab(ns, pki, etcd, tmp_path)
        init = ns.run(
            [str(BIN / "overlayctl"), *lab.flags(), "network", "init", "--network", "10.94.0.0/16"],
            check=False,
        )
        assert init.returncode == 0, init.stderr
        yield lab
    shutil.rmtree(etcd.data_dir, ignore_errors=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_daemon_with_good_certificates_leases_a_subnet(lab: Lab) -> None:
    proc = lab.overlayd("good", lab.flags())
    subnet_file = lab.workdir / "good" / "subnet.env"
    try:
        deadline = time.monotonic() + 30
        while not subnet_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert subnet_file.exists(), lab.log("good")
        assert "10.94." in subnet_file.read_text()
    finally:
        stop(proc)
    assert not GRPC_NOISE.search(lab.log("good")), lab.log("good")


def assert_exits(lab: Lab, name: str, flags: list[str], *words: str) -> None:
    proc = lab.overlayd(name, flags)
    try:
        code = proc.wait(EXIT_BOUND)
    except subprocess.TimeoutExpired:
        stop(proc)
        pytest.fail(f"overlayd still running (retrying?) after {EXIT_BOUND}s:\n{lab.log(name)}")
    log = lab.log(name)
    assert code == 2, f"exit {code}:\n{log}"
    for word in words:
        assert word in log, f"{word!r} not in:\n{log}"
    assert "Traceback" not in log, log
    assert "Warning" not in log, log
    assert not GRPC_NOISE.search(log), f"gRPC's own lines:\n{log}"


def test_daemon_exits_2_when_the_server_certificate_is_not_trusted(lab: Lab) -> None:
    other = lab.pki.other.cert_file
    assert_exits(lab, "wrongca", lab.flags(ca=other), "not trusted by --etcd-cafile", str(other))


def test_daemon_exits_2_when_the_server_rejects_its_certificate(lab: Lab) -> None:
    flags = lab.flags()
    flags[5], flags[7] = str(lab.pki.stranger.cert), str(lab.pki.stranger.key)
    assert_exits(lab, "stranger", flags, "rejected our client certificate")


def test_daemon_exits_2_on_a_key_that_does_not_match(lab: Lab) -> None:
    key = write_key(lab.workdir / "unrelated-key.pem")
    assert_exits(lab, "badkey", lab.flags(key=key), "does not match", str(key))
