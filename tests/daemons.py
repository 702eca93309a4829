"""Runs real overlayd daemons as separate processes inside test namespaces."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any

from tests.lab.netns import tool
from tests.lab.world import Host, World, ping

BIN = Path(sys.executable).parent


def ns_run(
    ns: str, *cmd: str, timeout: float = 30, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


@dataclass
class OverlaydProc:
    """One overlayd on a test-world host (its flags from ``World.overlayd_argv``)."""

    world: World
    host: Host
    extra: tuple[str, ...] = ()
    healthz_port: int = 10256
    tag: str = ""  # tells apart a second daemon on the same host (own files)
    public_ip: bool = True  # False: no --public-ip, the daemon must discover it
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def ns(self) -> str:
        return self.host.ns.name

    @property
    def node(self) -> str:
        return self.host.name

    @property
    def workdir(self) -> Path:
        return self.world.workdir / "overlayd" / f"{self.host.name}{self.tag}"

    @property
    def subnet_file(self) -> Path:
        return self.workdir / "subnet.env"

    @property
    def names_socket(self) -> Path:
        """Where the CNI plugin registers this daemon's containers (docs/dns.md)."""
        return self.workdir / "names.sock"

    @property
    def log_file(self) -> Path:
        return self.workdir / "overlayd.log"

    def start(self) -> OverlaydProc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = self.world.overlayd_argv(
            self.host, "--healthz-port", str(self.healthz_port), "--resync-interval", "5",
            "--state-dir", str(self.workdir / "state"), "--subnet-file", str(self.subnet_file),
            "--names-socket", str(self.names_socket), *self.extra, public_ip=self.public_ip,
        )  # fmt: skip
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        return self

    def status(self) -> dict[str, Any] | None:
        """The daemon's status document, from inside its namespace (None: not answering)."""
        url = f"http://127.0.0.1:{self.healthz_port}/status"
        out = ns_run(self.ns, *tool("http_get", url, "2", "--or-nothing")).stdout.strip()
        return json.loads(out) if out else None

    def require_status(self) -> dict[str, Any]:
        """``status()`` of a daemon that must be answering (AssertionError if it is not)."""
        st = self.status()
        if st is None:
            raise AssertionError(f"overlayd {self.node} does not answer /status:\n{self.log()}")
        return st

    def wait_ready(self, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"overlayd {self.node} exited:\n{self.log()}")
            st = self.status()
            if st and st.get("reconciles", 0) > 0 and st.get("subnet"):
                return st
            time.sleep(0.3)
        raise AssertionError(f"overlayd {self.node} not ready in {timeout}s:\n{self.log()}")

    def subnet_env(self) -> dict[str, str]:
        return dict(
            line.split("=", 1) for line in self.subnet_file.read_text().splitlines() if "=" in line
        )

    def overlay_ip(self) -> IPv4Address:
        """The node's address on its overlay device (its subnet's .0)."""
        return IPv4Interface(self.subnet_env()["OVERLAY_SUBNET"]).network.network_address

    def peers(self) -> dict[str, dict[str, Any]]:
        """``overlayctl peers`` of this daemon, by peer node name (empty if not answering)."""
        url = f"http://127.0.0.1:{self.healthz_port}"
        argv = [str(BIN / "overlayctl"), "peers", "--daemon", url, "-o", "json"]
        out = ns_run(self.ns, *argv, check=False).stdout
        return {p["node"]: p for p in json.loads(out)} if out else {}

    def pings(self, other: OverlaydProc, count: int = 1) -> bool:
        """Whether ``other``'s overlay address answers pings from this host."""
        return ping(self.host.ns, other.overlay_ip(), count).ok

    def log(self) -> str:
        try:
            return self.log_file.read_text()[-6000:]
        except FileNotFoundError:
            return "(no log)"

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait()

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)
        self.wait()

    def wait(self, timeout: float = 15) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, *, interval: float = 0.2
) -> float:
    """Poll ``check`` every ``interval``; returns the seconds it took, fails after ``timeout``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if check():
            return time.monotonic() - t0
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Background:
    """A ping running while something happens; ``stop()`` says (sent, received)."""

    def __init__(self, src: OverlaydProc, dst: OverlaydProc, interval: float = 0.1) -> None:
        self.proc = subprocess.Popen(
            [*src.host.ns.argv(["ping", "-i", str(interval), "-W", "1", str(dst.overlay_ip())])],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def stop(self) -> tuple[int, int]:
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=10)
        for line in out.splitlines():
            if "packets transmitted" in line:
                parts = line.split(",")
                return int(parts[0].split()[0]), int(parts[1].split()[0])
        raise AssertionError(f"no ping summary: {out[-500:]}")


def init_network(world: World, backend: str, network: str = "10.244.0.0/16") -> None:
    """``overlayctl network init`` of ``world`` (from its first host) with ``backend``."""
    ctl = [str(BIN / "overlayctl"), "--etcd-endpoints", world.etcd_endpoint]
    init = ["network", "init", "--network", network, "--backend", backend]
    ns_run(world.hosts[0].ns.name, *ctl, *init)


@contextlib.contextmanager
def running(
    world: World, names: Iterable[str], *, public_ip: bool = True, extra: Sequence[str] = ()
) -> Iterator[dict[str, OverlaydProc]]:
    """overlayd on each named host (with flags ``extra``), ready; killed (-9) on exit."""
    procs = {
        n: OverlaydProc(world, world.host(n), tuple(extra), public_ip=public_ip).start()
        for n in names
    }
    try:
        for p in procs.values():
            p.wait_ready()
        yield procs
    finally:
        for p in procs.values():
            p.kill9()


def full_matrix(daemons: dict[str, OverlaydProc], timeout: float = 15) -> None:
    """Every daemon's host pings every other's overlay address (the log on failure)."""
    for src, a in daemons.items():
        for dst, b in daemons.items():
            if src == dst:
                continue
            try:
                wait_until(partial(a.pings, b), timeout, f"{src} -> {dst}")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{pair_report(a, b)}") from None


def pair_report(a: OverlaydProc, b: OverlaydProc) -> str:
    """Both ends' logs and WireGuard state (keys hidden), for a failed pair."""
    parts = []
    for d in (a, b):
        # wireguard-go's UAPI sockets are files, seen from every namespace: name the device
        links = ns_run(d.ns, "ip", "-o", "link", "show", "type", "tun", check=False).stdout
        devices = [line.split(":")[1].strip() for line in links.splitlines() if "ovwg" in line]
        wg = ns_run(d.ns, "wg", "show", *(devices[:1] or ["all"]), check=False)
        wg_go = d.workdir / "state" / "wireguard-go.log"
        wg_log = wg_go.read_text()[-2000:] if wg_go.exists() else "(none)"
        parts.append(
            f"--- log of {d.node}:\n{d.log()}\n--- wg show on {d.node}:\n{wg.stdout}"
            f"--- wireguard-go log of {d.node}:\n{wg_log}"
        )
    return "\n".join(parts)
