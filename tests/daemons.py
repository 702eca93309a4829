"""Runs real overlayd daemons as separate processes inside test namespaces."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
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


def ns_python(ns: str, code: str, timeout: float = 30) -> str:
    return ns_run(ns, str(BIN / "python"), "-c", code, timeout=timeout).stdout


@dataclass
class OverlaydProc:
    """One overlayd in namespace ``ns``; state dir, subnet file and log under ``workdir``."""

    ns: str
    node: str
    etcd: str
    workdir: Path
    extra: tuple[str, ...] = ()
    healthz_port: int = 10256
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def subnet_file(self) -> Path:
        return self.workdir / "subnet.env"

    @property
    def log_file(self) -> Path:
        return self.workdir / "overlayd.log"

    def start(self) -> OverlaydProc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "ab")  # noqa: SIM115 - kept open for the process's life
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.ns,
                str(BIN / "overlayd"),
                "--etcd-endpoints",
                self.etcd,
                "--node-name",
                self.node,
                "--state-dir",
                str(self.workdir / "state"),
                "--subnet-file",
                str(self.subnet_file),
                "--healthz-port",
                str(self.healthz_port),
                "--resync-interval",
                "5",
                *self.extra,
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        return self

    def status(self) -> dict[str, Any] | None:
        code = (
            "import urllib.request,sys\n"
            "try:\n"
            f"  print(urllib.request.urlopen('http://127.0.0.1:{self.healthz_port}/status',timeout=2).read().decode())\n"
            "except Exception: pass\n"
        )
        out = ns_python(self.ns, code).strip()
        return json.loads(out) if out else None

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

    def overlay_ip(self) -> str:
        """The node's address on its overlay device (subnet .0)."""
        subnet = self.subnet_env()["OVERLAY_SUBNET"].split("/")[0]
        a, b, c, d = (int(x) for x in subnet.split("."))
        return f"{a}.{b}.{c}.{d - 1}"

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
