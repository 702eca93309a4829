"""Run, supervise and configure ``wireguard-go`` (userspace WireGuard) for one device.

Process model -- chosen so a daemon restart never takes the data plane down:

* wireguard-go runs in the foreground (``-f``) as our child, in the daemon's network
  namespace (the tun device is created where the process runs), in a **new session**: a
  SIGTERM/SIGINT sent to the daemon or its process group does not reach it, and it has
  no pipe to us (its output goes to a log file or /dev/null; a Go program writing to a
  closed pipe would die of SIGPIPE once we are gone).
* ``close()`` therefore leaves it running; ``close(stop=True)`` terminates it (the tun
  device and every peer session go with it). Under systemd the unit needs
  ``KillMode=process`` for a stopped daemon to leave it alive.
* On start, an instance already answering on the UAPI socket *in our namespace* is
  adopted (its config and sessions are kept; only differences are applied).
* Death is noticed through a pidfd (works for an adopted, non-child process as well) on a
  watcher thread, which reaps our child and calls ``on_exit`` so the daemon can wake its
  reconcile loop; the next ``ensure_device`` starts a new instance and the following
  ``apply`` restores the peers. The tun device is new then: the caller must re-add
  addresses and routes (``ensure_device`` returns True to say so).

The UAPI socket directory is shared by all namespaces, hence the per-node device name
(``model.interface_name``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from overlayd.dataplane.wireguard.device_link import DeviceLink
from overlayd.dataplane.wireguard.uapi import (
    UAPI_DIR,
    UapiClient,
    UapiUnavailable,
    encode_device_update,
    encode_set,
    socket_path,
)
from overlayd.values.errors import WireGuardError
from overlayd.values.wireguard import (
    PeerChanges,
    WgDeviceConfig,
    WgPeerConfig,
    WgState,
    device_update,
    diff_peers,
)

log = logging.getLogger("overlayd.wireguard")

_POLL_INTERVAL = 0.01
_STOP_TIMEOUT = 5.0


class _ExitWatcher:
    """Calls ``callback(pid)`` from a thread when process ``pid`` exits."""

    def __init__(self, pid: int, callback: Callable[[int], None]) -> None:
        self.pid = pid
        self._callback = callback
        self._pidfd = os.pidfd_open(pid)  # ProcessLookupError if already gone
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name=f"wg-watch-{pid}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            ready, _, _ = select.select([self._pidfd, self._wake_r], [], [])
            exited = self._pidfd in ready
        finally:
            # the write end stays open until cancel(): a closed fd number could be reused
            os.close(self._pidfd)
            os.close(self._wake_r)
        if exited:
            self._callback(self.pid)

    def cancel(self) -> None:
        """Stop watching; the callback is not called (unless the exit already fired)."""
        with contextlib.suppress(OSError):  # EPIPE when the thread has already finished
            os.write(self._wake_w, b"x")
        self._thread.join()
        os.close(self._wake_w)


def _wait_exit(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` has exited; False on timeout."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(pidfd)


class WireGuardGo:
    """Driver for a wireguard-go device (``link``'s interface) in the caller's namespace.

    ``on_exit`` is called (from a watcher thread) when the wireguard-go process exits; it
    should only wake the reconcile loop. ``starts`` counts the instances this object has
    started (restarts are ``starts - 1`` when it did not adopt one).
    """

    kind = "userspace"

    def __init__(
        self,
        link: DeviceLink,
        *,
        binary: str = "wireguard-go",
        socket_dir: Path = UAPI_DIR,
        log_path: Path | None = None,
        log_level: str = "error",
        on_exit: Callable[[], None] | None = None,
        start_timeout: float = 5.0,
    ) -> None:
        self.ifname = link.ifname
        self._link = link
        self.binary = binary
        self.log_path = log_path
        self.log_level = log_level
        self.on_exit = on_exit
        self.start_timeout = start_timeout
        self.starts = 0
        self._client = UapiClient(socket_path(link.ifname, socket_dir))
        self._proc: subprocess.Popen[bytes] | None = None
        self._watcher: _ExitWatcher | None = None

    def running(self) -> bool:
        """Whether a wireguard-go instance answers on this device's UAPI socket."""
        try:
            self._client.get()
        except UapiUnavailable:
            return False
        return True

    def _on_process_exit(self, pid: int) -> None:
        proc = self._proc
        if proc is not None and proc.pid == pid:
            log.warning(
                "wireguard-go for %s (pid %d) exited with status %s", self.ifname, pid, proc.wait()
            )
        else:
            log.warning("adopted wireguard-go for %s (pid %d) exited", self.ifname, pid)
        if self.on_exit is not None:
            self.on_exit()

    def _watch(self, pid: int) -> None:
        if self._watcher is not None:
            if self._watcher.pid == pid:
                return
            self._watcher.cancel()
            self._watcher = None
        try:
            self._watcher = _ExitWatcher(pid, self._on_process_exit)
        except ProcessLookupError:
            self._on_process_exit(pid)

    def _start(self) -> None:
        if self._proc is not None:
            self._proc.poll()  # reap a dead predecessor the watcher has not reaped yet
        env = dict(os.environ, LOG_LEVEL=self.log_level)
        # set by wireguard-go itself when it daemonizes; with it, no "use the kernel
        # module" banner is printed into our log on every start
        env["WG_PROCESS_FOREGROUND"] = "1"
        out = self.log_path.open("ab") if self.log_path else None
        try:
            proc = subprocess.Popen(
                [self.binary, "-f", self.ifname],
                stdin=subprocess.DEVNULL,
                stdout=out if out is not None else subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        except OSError as exc:
            raise WireGuardError(f"cannot run {self.binary}: {exc.strerror}") from None
        finally:
            if out is not None:
                out.close()
        hint = f"see {self.log_path}" if self.log_path else "run it by hand to see why"
        deadline = time.monotonic() + self.start_timeout
        while not self.running():
            status = proc.poll()
            if status is not None:
                raise WireGuardError(
                    f"wireguard-go for {self.ifname} exited with status {status} on start",
                    hint=hint,
                )
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise WireGuardError(
                    f"wireguard-go for {self.ifname} did not open its UAPI socket "
                    f"within {self.start_timeout:.0f}s",
                    hint=hint,
                )
            time.sleep(_POLL_INTERVAL)
        self._proc = proc
        self.starts += 1
        log.info("started wireguard-go for %s (pid %d)", self.ifname, proc.pid)
        self._watch(proc.pid)

    def ensure_device(self, device: WgDeviceConfig) -> bool:
        """Adopt or start wireguard-go, apply key/port/fwmark if they differ, bring it up.

        True when a new instance (so a new tun device) was started by this call: the
        caller must (re)apply the device's addresses and routes, then ``apply`` the peers.
        """
        created = False
        try:
            state = self._client.get()
        except UapiUnavailable:
            self._start()
            created = True
            state = self._client.get()
        else:
            if self._link.find() is None:
                raise WireGuardError(
                    f"{self._client.path} is served by a wireguard-go in another network "
                    f"namespace: device name {self.ifname} collides",
                    hint="every node needs its own node id (and so device name)",
                )
            self._watch(self._client.server_pid())
        update = device_update(state, device)
        if update:
            self._client.set(encode_device_update(update))
        self._link.set_up(device.mtu)
        return created

    def read(self) -> WgState:
        """The device's configuration and peers as wireguard-go reports them."""
        return self._client.get()

    def apply(self, peers: Iterable[WgPeerConfig], *, allow_delete: bool = True) -> PeerChanges:
        """Diff ``peers`` against the device and send the per-peer changes in one ``set``."""
        changes = diff_peers(peers, self.read().peers, allow_delete=allow_delete, now=time.time())
        if changes:
            self._client.set(encode_set(changes))
        return changes

    def close(self, *, stop: bool = False) -> None:
        """Stop supervising. wireguard-go keeps running unless ``stop`` is set.

        With ``stop`` the process is sent SIGTERM (SIGKILL after 5 s) and waited for.
        """
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        if not stop:
            return
        pid: int | None
        try:
            pid = self._client.server_pid()
        except UapiUnavailable:
            # our child may be alive but not (yet) answering
            pid = self._proc.pid if self._proc is not None and self._proc.poll() is None else None
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                if not _wait_exit(pid, _STOP_TIMEOUT):
                    log.warning("wireguard-go for %s ignored SIGTERM; killing it", self.ifname)
                    os.kill(pid, signal.SIGKILL)
                    _wait_exit(pid, _STOP_TIMEOUT)
        if self._proc is not None:
            self._proc.poll()
            self._proc = None
