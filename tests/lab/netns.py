"""Network-namespace primitives for test worlds: namespaces, veths, bridges, addresses, routes.

The calling process never enters a namespace: every command runs as an ``ip netns exec``
(or ``ip -n``) subprocess. Interfaces are created directly inside the namespaces they belong
to, so nothing but the namespaces themselves (all named with the caller's prefix) appears in
the root namespace. Offloads are left at their defaults.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import selectors
import signal
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
_VENV_PYTHON = REPO / ".venv" / "bin" / "python"
PYTHON = str(_VENV_PYTHON) if _VENV_PYTHON.exists() else sys.executable
"""Interpreter for helper processes run inside namespaces (the repo's venv if present)."""


def tool(name: str, *args: str) -> list[str]:
    """argv that runs the helper program ``tests.lab.tools.<name>`` with ``args``.

    The helpers are real modules (checked by ruff and mypy like every test); ``PYTHONPATH``
    makes the repo root importable whatever the working directory of the caller.
    """
    return ["env", f"PYTHONPATH={REPO}", PYTHON, "-m", f"tests.lab.tools.{name}", *args]


IFNAMSIZ = 15
"""Longest interface name the kernel accepts."""


class CommandError(subprocess.CalledProcessError):
    """A command failed; unlike its base class, ``str()`` includes the captured output."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout: {self.output}\nstderr: {self.stderr}"


def run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 30.0,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in the root namespace, capturing text output; raise ``CommandError``."""
    proc = subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=timeout, input=input, check=False
    )
    if check and proc.returncode != 0:
        raise CommandError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return proc


def check_ifname(name: str) -> str:
    """Return ``name`` if the kernel accepts it as an interface name, else raise ValueError."""
    if not name or len(name) > IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
        raise ValueError(f"bad interface name {name!r} (1-{IFNAMSIZ} chars, no '/' or spaces)")
    return name


@dataclass(frozen=True, order=True)
class Namespace:
    """A named network namespace (``/run/netns/<name>``)."""

    name: str

    def argv(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` wrapped so that it runs inside this namespace."""
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(
        self,
        cmd: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside the namespace and wait for it (text output captured)."""
        return run(self.argv(cmd), check=check, timeout=timeout, input=input)

    def popen(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``cmd`` inside the namespace; ``kwargs`` go to ``subprocess.Popen``.

        ``ip netns exec`` execs the command, so the Popen's pid is the command's own pid.
        """
        return subprocess.Popen(self.argv(cmd), **kwargs)

    def sh(self, script: str, *, check: bool = True, timeout: float = 30.0) -> str:
        """Run a ``sh -c`` script inside the namespace and return its stdout."""
        return self.run(["sh", "-c", script], check=check, timeout=timeout).stdout

    def ip(self, *args: str, check: bool = True) -> str:
        """Run ``ip -n <ns> args...`` and return its stdout."""
        return run(["ip", "-n", self.name, *args], check=check).stdout

    def nft(self, ruleset: str) -> None:
        """Load an nftables script (``nft -f -``) inside the namespace, atomically."""
        self.run(["nft", "-f", "-"], input=ruleset)

    def nft_set(self, family: str, table: str, name: str) -> set[str]:
        """The elements of an nftables set, as nft prints them (empty if it has none)."""
        out = self.run(["nft", "list", "set", family, table, name]).stdout
        found = re.search(r"elements = \{(.*?)\}", out, re.S)
        return {e.strip() for e in found.group(1).split(",")} if found else set()

    def sysctl(self, key: str, value: str | int) -> None:
        """Set a sysctl of this namespace (e.g. ``net.ipv4.ip_forward``)."""
        self.run(["sysctl", "-qw", f"{key}={value}"])

    def set_forwarding(self, enabled: bool = True) -> None:
        """Turn IPv4 forwarding on or off."""
        self.sysctl("net.ipv4.ip_forward", int(enabled))

    def set_rp_filter(self, mode: int) -> None:
        """Reverse-path filter for all interfaces, present and future (0 off, 1 strict, 2 loose)."""
        for scope in ("all", "default"):
            self.sysctl(f"net.ipv4.conf.{scope}.rp_filter", mode)

    def add_address(self, ifname: str, address: IPv4Interface) -> None:
        """Add ``address`` (with its prefix length) to ``ifname``."""
        self.ip("addr", "add", str(address), "dev", ifname)

    def add_route(self, dst: IPv4Network | None, via: IPv4Address) -> None:
        """Route ``dst`` (``None``: the default route) via gateway ``via``."""
        self.ip("route", "add", "default" if dst is None else str(dst), "via", str(via))

    def link_up(self, ifname: str) -> None:
        """Set ``ifname`` up."""
        self.ip("link", "set", "dev", ifname, "up")

    def add_bridge(self, name: str) -> None:
        """Create and bring up a bridge without STP, not passing frames to netfilter.

        Bridged IPv4 would otherwise go through this namespace's nftables hooks and
        conntrack (``br_netfilter`` is built in), which real switches do not do.
        """
        self.ip("link", "add", check_ifname(name), "type", "bridge", "stp_state", "0")
        for family in ("iptables", "ip6tables", "arptables"):
            self.sysctl(f"net.bridge.bridge-nf-call-{family}", 0)
        self.link_up(name)

    def attach(self, ifname: str, bridge: str) -> None:
        """Make ``ifname`` a port of ``bridge`` and bring it up."""
        self.ip("link", "set", "dev", ifname, "master", bridge, "up")

    def addresses(self, ifname: str | None = None) -> list[IPv4Interface]:
        """IPv4 addresses of ``ifname`` (or of all interfaces), as seen by ``ip addr``."""
        args = ["-4", "-o", "addr", "show"] + ([] if ifname is None else ["dev", ifname])
        out = self.ip(*args)
        return [
            IPv4Interface(fields[fields.index("inet") + 1])
            for fields in (line.split() for line in out.splitlines())
            if "inet" in fields
        ]

    def pids(self) -> list[int]:
        """Pids of processes running in this namespace (``ip netns pids``)."""
        out = run(["ip", "netns", "pids", self.name], check=False).stdout
        return [int(p) for p in out.split()]


def list_namespaces(prefix: str = "") -> list[Namespace]:
    """Existing named namespaces whose names start with ``prefix``."""
    out = run(["ip", "netns", "list"]).stdout
    names = (line.split()[0] for line in out.splitlines() if line.strip())
    return sorted(Namespace(n) for n in names if n.startswith(prefix))


def create_namespace(name: str) -> Namespace:
    """Create namespace ``name`` with its loopback up; fail if it exists."""
    run(["ip", "netns", "add", name])
    ns = Namespace(name)
    ns.link_up("lo")
    return ns


def _kill_all(ns: Namespace, grace: float) -> None:
    """SIGTERM every process in ``ns``, then SIGKILL what is left after ``grace`` seconds."""
    sig = signal.SIGTERM
    deadline = time.monotonic() + grace
    while pids := ns.pids():
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if time.monotonic() > deadline:
            if sig == signal.SIGKILL:
                return
            sig = signal.SIGKILL
            deadline = time.monotonic() + grace
        time.sleep(0.05)


def delete_namespace(ns: Namespace, *, grace: float = 3.0) -> None:
    """Stop every process left in ``ns`` (by pid), then delete it; no error if it is gone."""
    _kill_all(ns, grace)
    run(["ip", "netns", "del", ns.name], check=False)


def cleanup(prefix: str) -> list[str]:
    """Delete every namespace whose name starts with ``prefix`` (processes in them first).

    Also meant for the start of a session, to remove what a crashed run left behind.
    Returns the names it deleted.
    """
    if not prefix:
        raise ValueError("refusing to clean up with an empty prefix")
    victims = list_namespaces(prefix)
    for ns in victims:
        delete_namespace(ns)
    return [ns.name for ns in victims]


def veth(a: Namespace, a_if: str, b: Namespace, b_if: str) -> None:
    """Connect ``a`` and ``b`` with a veth pair (``a_if`` in ``a``, ``b_if`` in ``b``), both up."""
    a.ip(
        "link", "add", check_ifname(a_if), "type", "veth",
        "peer", "name", check_ifname(b_if), "netns", b.name,
    )  # fmt: skip
    a.link_up(a_if)
    b.link_up(b_if)


# --- delayed links: the kernel here has no netem, so a helper process relays frames ---

_TUNSETIFF = 0x400454CA
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000


def _open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TAP | _IFF_NO_PI))
    return fd


def serve_delay_link(near: str, far: str, delay_ms: float) -> None:
    """Body of a delay-link process: two TAP devices, every frame relayed after ``delay_ms``.

    Creates TAPs ``near`` and ``far`` in the current namespace, prints ``ready``, then copies
    frames between them in both directions, each ``delay_ms`` after it arrived. Returns when
    a device disappears (its namespace was deleted).
    """
    delay = delay_ms / 1000
    fds = (_open_tap(near), _open_tap(far))
    pending: tuple[deque[tuple[float, bytes]], ...] = (deque(), deque())  # read from fds[i]
    sel = selectors.DefaultSelector()
    for i, fd in enumerate(fds):
        sel.register(fd, selectors.EVENT_READ, i)
    print("ready", flush=True)
    try:
        while True:
            now = time.monotonic()
            for i, queue in enumerate(pending):
                while queue and queue[0][0] <= now:
                    # EIO: the other side is down; the frame is lost, as on a cable.
                    with contextlib.suppress(BlockingIOError, OSError):
                        os.write(fds[1 - i], queue.popleft()[1])
            dues = [queue[0][0] for queue in pending if queue]
            for key, _ in sel.select(max(0.0, min(dues) - now) if dues else None):
                due = time.monotonic() + delay
                for _ in range(256):
                    try:
                        pending[key.data].append((due, os.read(fds[key.data], 65536)))
                    except BlockingIOError:
                        break
    except OSError as exc:
        if exc.errno != errno.EBADFD:
            raise


def delay_link(
    a: Namespace, a_if: str, b: Namespace, b_if: str, delay_ms: float
) -> subprocess.Popen[str]:
    """Like ``veth`` but every frame crossing the link, either way, waits ``delay_ms``.

    The frames are relayed by a helper process running in ``a`` (returned; it ends when the
    namespaces are deleted, or terminate it). Slower than a veth (a few hundred Mbit/s).
    """
    proc = a.popen(
        tool("delay_link", check_ifname(a_if), check_ifname(b_if), str(delay_ms)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        _, err = proc.communicate()
        raise RuntimeError(f"delay link {a.name}/{a_if} did not start: {err}")
    a.ip("link", "set", "dev", b_if, "netns", b.name)
    a.link_up(a_if)
    b.link_up(b_if)
    return proc


def cleanup_stale(base: str) -> list[str]:
    """Delete namespaces named ``<base><pid>-...`` whose creating process ``pid`` is gone.

    For prefixes that embed the pid of the test session that made them, so a new session
    removes what crashed ones left without touching those of sessions still running.
    """
    stale = {
        pid
        for ns in list_namespaces(base)
        if (pid := ns.name[len(base) :].split("-", 1)[0]).isdigit()
        and not Path(f"/proc/{pid}").exists()
    }
    return [name for pid in sorted(stale) for name in cleanup(f"{base}{pid}-")]
