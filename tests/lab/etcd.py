"""A real etcd (``/usr/bin/etcd``, v3.4) run as subprocesses for tests.

One member either on 127.0.0.1 with free ports (tests that only need a store) or inside a
network namespace on a given address. ``stop()`` then ``start()`` again restarts it on the
same data directory and ports, for outage tests. With ``tls`` (an ``EtcdTls``) the client
listener speaks only TLS (``https://``), optionally requiring client certificates.
``EtcdCluster``: several members on one address, each with its own ports, data directory and
log, for member-failure tests.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from types import TracebackType

from tests.lab.certs import CertFiles
from tests.lab.netns import Namespace

ETCD = "/usr/bin/etcd"
LOOPBACK = IPv4Address("127.0.0.1")
ETCDCTL = "/usr/bin/etcdctl"
# glog-style lines of gRPC's C core ("E1201 12:34:45.026 9164 secure_endpoint.cc:269] …"),
# which overlayd must not let through to its stderr (tests/security/test_etcd_tls*.py)
GRPC_NOISE = re.compile(r"^[IWEF]\d{4} |\.cc:\d+\]|TSI_|SSL_ERROR|handshaker", re.MULTILINE)
# etcd 3.4 refuses to start on architectures it does not officially support unless told.
_SUPPORTED_ARCHES = {"x86_64": None, "ppc64le": None, "aarch64": "arm64"}


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports on ``host`` that nobody listens on right now."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in socks]


@dataclass(frozen=True)
class EtcdTls:
    """TLS of the client listener: the server's certificate and the CA that signed it.

    ``client_ca``: clients must present a certificate signed by it (etcd's
    ``--client-cert-auth --trusted-ca-file``; etcd requires client certificates whenever a
    trusted CA is given). ``client`` is the certificate ``healthy()`` presents then.
    """

    server: CertFiles
    ca: Path
    client_ca: Path | None = None
    client: CertFiles | None = None


class EtcdServer:
    """One etcd member; its data directory and ``etcd.log`` live in ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        *,
        namespace: Namespace | None = None,
        host: IPv4Address = LOOPBACK,
        client_port: int | None = None,
        peer_port: int | None = None,
        name: str = "lab",
        initial_cluster: str | None = None,
        tls: EtcdTls | None = None,
    ) -> None:
        """Describe (not start) a member. Without ``namespace`` it runs in the root namespace
        and ports default to free ones; inside a namespace they default to 2379/2380.
        ``initial_cluster`` (etcd's ``name=peer-url,…``) makes it one member of several."""
        self.workdir = workdir
        self.namespace = namespace
        self.host = host
        free = free_ports(2, str(host)) if namespace is None else [2379, 2380]
        self.client_port = client_port or free[0]
        self.peer_port = peer_port or free[1]
        self.name = name
        self.initial_cluster = initial_cluster
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def peer_url(self) -> str:
        """``http://ip:port`` of the peer listener."""
        return f"http://{self.host}:{self.peer_port}"

    @property
    def data_dir(self) -> Path:
        """The member's data directory (kept across ``stop``/``start``)."""
        return self.workdir / "data"

    @property
    def log_file(self) -> Path:
        """etcd's own log (appended to by every start)."""
        return self.workdir / "etcd.log"

    @property
    def endpoint(self) -> str:
        """``ip:port`` of the client listener."""
        return f"{self.host}:{self.client_port}"

    @property
    def url(self) -> str:
        """``http://ip:port`` (``https://`` with TLS) of the client listener."""
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://{self.endpoint}"

    def _tls_argv(self) -> list[str]:
        tls = self.tls
        if tls is None:
            return []
        argv = [f"--cert-file={tls.server.cert}", f"--key-file={tls.server.key}"]
        if tls.client_ca is not None:
            argv += ["--client-cert-auth", f"--trusted-ca-file={tls.client_ca}"]
        return argv

    def _etcdctl_tls(self) -> list[str]:
        tls = self.tls
        if tls is None:
            return []
        argv = [f"--cacert={tls.ca}"]
        if tls.client is not None:
            argv += [f"--cert={tls.client.cert}", f"--key={tls.client.key}"]
        return argv

    @property
    def running(self) -> bool:
        """Whether the etcd process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def _argv(self) -> list[str]:
        peer = self.peer_url
        argv = [
            ETCD,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={self.initial_cluster or f'{self.name}={peer}'}",
            "--initial-cluster-state=new",
            "--logger=zap",
            "--log-outputs=stderr",
            *self._tls_argv(),
        ]
        return argv if self.namespace is None else self.namespace.argv(argv)

    def start(self) -> EtcdServer:
        """Start etcd (not waiting for it to be healthy); no-op if it is running."""
        if self.running:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        arch = _SUPPORTED_ARCHES.get(platform.machine(), platform.machine())
        if arch is not None:
            env["ETCD_UNSUPPORTED_ARCH"] = arch
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        return self

    def healthy(self) -> bool:
        """Whether ``etcdctl endpoint health`` succeeds (run where the server is reachable)."""
        cmd = [
            ETCDCTL,
            f"--endpoints={self.url}",
            "--command-timeout=2s",
            *self._etcdctl_tls(),
            "endpoint",
            "health",
        ]
        argv = cmd if self.namespace is None else self.namespace.argv(cmd)
        env = {**os.environ, "ETCDCTL_API": "3"}
        proc = subprocess.run(argv, capture_output=True, timeout=10, env=env, check=False)
        return proc.returncode == 0

    def wait_healthy(self, timeout: float = 20.0) -> EtcdServer:
        """Block until the member answers health checks; raise with its log if it does not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.healthy():
                return self
            time.sleep(0.1)
        raise TimeoutError(f"etcd at {self.endpoint} not healthy in {timeout}s:\n{self.log_tail()}")

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM; SIGKILL after ``timeout``). ``start()`` restarts it."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Kill at once (SIGKILL), as in a crash; ``start()`` restarts it."""
        self._signal(signal.SIGKILL, 5.0)

    def log_tail(self, nbytes: int = 4000) -> str:
        """The end of the log, for error messages."""
        try:
            return self.log_file.read_bytes()[-nbytes:].decode(errors="replace")
        except FileNotFoundError:
            return "(no log)"

    def __enter__(self) -> EtcdServer:
        return self.start().wait_healthy()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = "root" if self.namespace is None else self.namespace.name
        return f"EtcdServer({self.endpoint} in {where}, {self.workdir})"


class EtcdCluster:
    """``size`` etcd members on one address, data and logs under ``workdir``.

    Members are started and stopped by PID (``EtcdServer``); ``kill(i)`` crashes one.
    """

    def __init__(
        self,
        workdir: Path,
        size: int = 3,
        *,
        namespace: Namespace | None = None,
        host: IPv4Address = LOOPBACK,
        base_port: int = 22379,
    ) -> None:
        """Describe (not start) the members: in the root namespace on free ports, or in
        ``namespace`` on ``host`` with ports ``base_port``, ``base_port + 1``, … (client,
        peer, next member's client, …)."""
        if namespace is None:
            ports = free_ports(2 * size, str(host))
        else:
            ports = list(range(base_port, base_port + 2 * size))
        urls = [f"m{i}=http://{host}:{ports[2 * i + 1]}" for i in range(size)]
        self.members = [
            EtcdServer(
                workdir / f"m{i}",
                namespace=namespace,
                host=host,
                client_port=ports[2 * i],
                peer_port=ports[2 * i + 1],
                name=f"m{i}",
                initial_cluster=",".join(urls),
            )
            for i in range(size)
        ]

    @property
    def endpoints(self) -> str:
        """Comma list of every member's ``ip:port`` (``--etcd-endpoints``)."""
        return ",".join(m.endpoint for m in self.members)

    def start(self) -> EtcdCluster:
        """Start every member (they need each other to elect a leader), wait until healthy."""
        for member in self.members:
            member.start()
        for member in self.members:
            member.wait_healthy(timeout=30)
        return self

    def stop(self) -> None:
        """Stop every member still running."""
        for member in self.members:
            member.stop()

    def __enter__(self) -> EtcdCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
