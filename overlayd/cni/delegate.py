"""Running the delegate plugin (``bridge`` by default) the way a CNI runtime would.

``os.posix_spawn`` and two pipes instead of ``subprocess``: the plugin runs once per
container, and ``subprocess`` (with ``signal``, ``threading``, ``selectors``) would cost
more to import than the whole exchange needs.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from overlayd.cni.errors import CniError, Code, DelegateError

# ``typing`` costs milliseconds to import on every plugin run; annotations are strings.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def find(plugin_type: str, search_path: tuple[str, ...]) -> Path:
    """The first executable ``plugin_type`` in the ``CNI_PATH`` directories."""
    for directory in search_path:
        candidate = Path(directory) / plugin_type
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(
        Code.DELEGATE_NOT_FOUND,
        f"delegate plugin {plugin_type!r} not found",
        f"searched CNI_PATH {':'.join(search_path) or '(empty)'}",
    )


def invoke(plugin: Path, command: str, env: Mapping[str, str], config: Mapping[str, Any]) -> bytes:
    """Run ``plugin`` with ``CNI_COMMAND=command``, ``env`` on top of our own environment,
    and ``config`` on stdin; return its stdout.

    A non-zero exit becomes a ``DelegateError`` carrying the delegate's own CNI error, or
    code 101 if it did not print one. The delegate's stderr is ours (the runtime logs it).
    """
    child_env = dict(os.environ)
    child_env.update(env)
    child_env["CNI_COMMAND"] = command
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    try:
        pid = os.posix_spawn(
            plugin,
            [str(plugin)],
            child_env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, stdin_r, 0),
                (os.POSIX_SPAWN_DUP2, stdout_w, 1),
            ],
        )
    except OSError as exc:
        for fd in (stdin_r, stdin_w, stdout_r, stdout_w):
            os.close(fd)
        raise CniError(Code.DELEGATE_FAILED, f"cannot run {plugin}", str(exc)) from None
    os.close(stdin_r)
    os.close(stdout_w)
    # Writing all of stdin before reading cannot deadlock: a CNI plugin reads its whole
    # stdin before it writes anything.
    # BrokenPipeError: the delegate exited early; its status and output say why. The
    # suppress must enclose the close too: the buffered write only reaches the pipe then.
    with contextlib.suppress(BrokenPipeError), os.fdopen(stdin_w, "wb") as pipe_in:
        pipe_in.write(json.dumps(config).encode())
    with os.fdopen(stdout_r, "rb") as pipe_out:
        output = pipe_out.read()
    _, status = os.waitpid(pid, 0)
    exit_code = os.waitstatus_to_exitcode(status)
    if exit_code != 0:
        raise _delegate_error(plugin, command, exit_code, output)
    return output


def _delegate_error(plugin: Path, command: str, exit_code: int, output: bytes) -> CniError:
    try:
        body = json.loads(output)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("code"), int) and "msg" in body:
        return DelegateError(body["code"], str(body["msg"]), str(body.get("details", "")))
    return CniError(
        Code.DELEGATE_FAILED,
        f"{plugin.name} {command} failed with exit status {exit_code}",
        output.decode(errors="replace").strip()[:2000],
    )


def supported_versions(plugin: Path, cni_version: str) -> tuple[str, ...]:
    """The spec versions the delegate implements (its ``VERSION`` answer)."""
    output = invoke(plugin, "VERSION", {}, {"cniVersion": cni_version})
    try:
        versions = json.loads(output)["supportedVersions"]
    except (ValueError, KeyError, TypeError):
        raise CniError(
            Code.DELEGATE_FAILED, f"{plugin.name} VERSION answer is not valid", repr(output[:200])
        ) from None
    return tuple(str(v) for v in versions)
