"""podman with the CNI network backend, confined to one network namespace and a work dir.

Reusable wherever a test needs real containers attached through CNI: one ``PodmanHost``
per (simulated) host namespace. Only the standard library is used, so a test elsewhere can
load this file as it is. What podman 4.3 needs on this kind of machine, and why:

* ``network_backend = "cni"``: 4.3 defaults to netavark, which never runs CNI plugins.
* ``runtime = "runc"``: crun fails on this machine's cgroup setup.
* ``nsenter --net=/run/netns/NAME``: ``ip netns exec`` also remounts ``/sys``, which
  podman's storage and cgroup handling trip over; only the network namespace is entered.
* storage, run and tmp dirs under the work dir (``--root``/``--runroot``/``--tmpdir``,
  ``vfs`` driver, which needs no kernel overlay support) and the CNI config dir in
  ``containers.conf``: nothing of the host's podman state is read or written.
* ``nofile`` and ``nproc`` limits set explicitly: podman's default (1048576) exceeds what
  the runtime may set without CAP_SYS_RESOURCE, and runc then refuses to start.
* the image is imported from a rootfs tarball holding the static busybox: no registry.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Interface
from pathlib import Path
from types import TracebackType
from typing import Any

BUSYBOX = Path("/bin/busybox")
IMAGE = "localhost/ovcni-busybox:latest"
APPLETS = (
    "sh", "sleep", "cat", "echo", "ip", "ping", "nc", "hostname", "timeout",
    "dd", "md5sum", "wc", "seq",
)  # fmt: skip
LIBCNI_RESULTS = Path("/var/lib/cni/results")  # podman's libcni cache (not configurable)


def busybox_rootfs_tar() -> bytes:
    """A minimal root filesystem: the static busybox and one symlink per applet used."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("bin", "etc", "tmp", "proc", "sys", "dev"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    return buffer.getvalue()


def overlay_conflist(
    name: str,
    subnet_file: Path,
    data_dir: Path,
    lease_dir: Path | None = None,
    names_socket: Path | None = None,
) -> dict[str, Any]:
    """A conflist attaching containers through the ``overlay`` plugin, ``portmap`` chained
    (as in packaging/cni), with the plugin's files at the given places; ``names_socket``:
    the daemon's, for container names (default: none, names are not registered)."""
    overlay: dict[str, Any] = {
        "type": "overlay",
        "subnetFile": str(subnet_file),
        "dataDir": str(data_dir),
        "namesSocket": str(names_socket) if names_socket is not None else "",
    }
    if lease_dir is not None:
        overlay["delegate"] = {"ipam": {"dataDir": str(lease_dir)}}
    return {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [overlay, {"type": "portmap", "capabilities": {"portMappings": True}}],
    }


@dataclass
class PodmanHost:
    """podman running inside network namespace ``netns`` with all state in ``workdir``.

    ``plugin_dirs`` is the CNI plugin search path (the directory holding ``overlay``
    first, then the stock plugins). The work dir is a fresh directory directly under
    /tmp because podman refuses a runroot path longer than 50 characters. Use as a
    context manager: leaving removes every container (so every CNI DEL runs) and the
    work dir.
    """

    netns: str
    plugin_dirs: Sequence[Path]
    workdir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="ovcni-podman-", dir="/tmp"))
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        dirs = ", ".join(json.dumps(str(d)) for d in self.plugin_dirs)
        self.containers_conf.write_text(
            "[containers]\n"
            'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            "[network]\n"
            'network_backend = "cni"\n'
            f"cni_plugin_dirs = [{dirs}]\n"
            f"network_config_dir = {json.dumps(str(self.conf_dir))}\n"
        )

    @property
    def conf_dir(self) -> Path:
        return self.workdir / "net.d"

    @property
    def containers_conf(self) -> Path:
        return self.workdir / "containers.conf"

    def podman(
        self, *args: str, check: bool = True, timeout: float = 120, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        argv = [
            "nsenter", f"--net=/run/netns/{self.netns}",
            "env", f"CONTAINERS_CONF={self.containers_conf}",
            "podman",
            "--root", str(self.workdir / "storage"),
            "--runroot", str(self.workdir / "runroot"),
            "--tmpdir", str(self.workdir / "tmp"),
            "--storage-driver", "vfs",
            *args,
        ]  # fmt: skip
        proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} failed ({proc.returncode}): {proc.stderr.decode()}"
            )
        return proc

    def import_image(self) -> str:
        """Import the busybox image (``IMAGE``) from a tarball built on the fly."""
        self.podman("import", "-", IMAGE, stdin=busybox_rootfs_tar())
        return IMAGE

    def add_network(self, conflist: dict[str, Any]) -> Path:
        """Write a conflist into podman's CNI config dir; the network is ``conflist['name']``."""
        path = self.conf_dir / f"{conflist['name']}.conflist"
        path.write_text(json.dumps(conflist, indent=2))
        return path

    def run_container(
        self, name: str, network: str, *command: str, options: Sequence[str] = ()
    ) -> str:
        """Start a detached container on ``network`` (default command: sleep; ``options``:
        more ``podman run`` flags, e.g. ``--dns``); its ID."""
        argv = ["run", "-d", "--name", name, "--network", network, "--cap-add", "NET_RAW"]
        argv += options
        proc = self.podman(*argv, IMAGE, *(command or ("sleep", "3600")))
        return proc.stdout.decode().strip()

    def exec(self, name: str, *command: str, check: bool = True) -> str:
        return self.podman("exec", name, *command, check=check).stdout.decode()

    def address(self, name: str, ifname: str = "eth0") -> IPv4Interface:
        """The container's IPv4 address on ``ifname``."""
        fields = self.exec(name, "ip", "-4", "-o", "addr", "show", ifname).split()
        return IPv4Interface(fields[fields.index("inet") + 1])

    def logs(self, name: str) -> str:
        return self.podman("logs", name).stdout.decode()

    def wait(self, name: str, timeout: float = 30) -> int:
        """Wait for the container to exit; its exit code."""
        return int(self.podman("wait", name, timeout=timeout).stdout.decode().strip())

    def remove_container(self, name: str) -> None:
        """Remove at once (no stop grace period): podman runs the CNI DEL."""
        self.podman("rm", "-f", "-t", "0", name)

    def close(self) -> None:
        self.podman("rm", "-a", "-f", "-t", "0", check=False)
        self.podman("system", "reset", "-f", check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PodmanHost:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
