"""The plugin's commands and its entry point: environment + stdin in, JSON out.

ADD/DEL/CHECK run the delegate with the configuration cached for the attachment; STATUS
and GC (spec 1.1) answer for overlayd's subnet and pass on to the delegate when it speaks
1.1 itself. Version handling: the delegate gets the runtime's ``cniVersion`` when it
supports it, otherwise the best older one it offers (Debian's bridge 1.1.1 stops at
1.0.0), and results are converted back to the runtime's version.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from overlayd.cni import cache, delegate, names
from overlayd.cni.cache import Attachment
from overlayd.cni.errors import CniError, Code, DelegateError, to_cni_error
from overlayd.cni.netconf import NetConf, delegate_config, shape_differences
from overlayd.cni.spec import (
    LATEST_VERSION,
    SUPPORTED_VERSIONS,
    Invocation,
    best_common_version,
    convert_result,
    require_version,
)
from overlayd.disk.subnet_file import read_subnet_file
from overlayd.values.errors import ConfigError

DEBUG_ENV = "OVERLAY_CNI_DEBUG"

# ``typing`` costs milliseconds to import on every plugin run; annotations are strings.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ipaddress import IPv4Network
    from typing import Any, BinaryIO

    from overlayd.values.registration import Registration


def log(message: str) -> None:
    """Diagnostics on stderr, only when ``OVERLAY_CNI_DEBUG`` is set: runtimes keep the
    plugin's stderr, and a quiet plugin is what they expect."""
    if os.environ.get(DEBUG_ENV):
        sys.stderr.write(f"overlay: {message}\n")


def run(inv: Invocation, stdin: bytes) -> bytes:
    """Execute one command; return what goes to stdout (possibly nothing)."""
    raw = _decode(stdin, allow_empty=inv.command == "VERSION")
    version = raw.get("cniVersion", LATEST_VERSION)
    if not isinstance(version, str):
        raise CniError(Code.INVALID_NETWORK_CONFIG, "'cniVersion' must be a string")
    if inv.command == "VERSION":
        answer = version if version in SUPPORTED_VERSIONS else LATEST_VERSION
        return _dump({"cniVersion": answer, "supportedVersions": list(SUPPORTED_VERSIONS)})
    if "cniVersion" not in raw:
        raise CniError(
            Code.INVALID_NETWORK_CONFIG, "invalid network configuration", "'cniVersion' is missing"
        )
    require_version(version, inv.command)
    conf = NetConf.parse(raw, version, inv.command)
    handler = _HANDLERS[inv.command]
    return handler(inv, conf)


def _decode(stdin: bytes, *, allow_empty: bool) -> dict[str, Any]:
    if allow_empty and not stdin.strip():
        return {}
    try:
        raw = json.loads(stdin)
    except ValueError as exc:
        raise CniError(
            Code.DECODING_FAILURE, "cannot decode network configuration", str(exc)
        ) from None
    if not isinstance(raw, dict):
        raise CniError(Code.DECODING_FAILURE, "network configuration is not a JSON object")
    return raw


def _dump(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body).encode() + b"\n"


def _attachment_env(attachment: Attachment, netns: str) -> dict[str, str]:
    return {
        "CNI_CONTAINERID": attachment.container_id,
        "CNI_IFNAME": attachment.ifname,
        "CNI_NETNS": netns,
    }


def _attachment(inv: Invocation, conf: NetConf) -> Attachment:
    return Attachment(conf.name, inv.container_id, inv.ifname)


def cmd_add(inv: Invocation, conf: NetConf) -> bytes:
    """Cache the delegate configuration, then run the delegate's ADD."""
    subnet = read_subnet_file(conf.subnet_file)
    attachment = _attachment(inv, conf)
    config = delegate_config(conf, subnet, conf.cni_version)
    plugin = delegate.find(config["type"], inv.path)
    # Cached before the delegate runs: if it dies halfway, the runtime's DEL still finds
    # what to undo.
    cache.store(conf.data_dir, attachment, config)
    env = _attachment_env(attachment, inv.netns)
    try:
        output = delegate.invoke(plugin, "ADD", env, config)
    except DelegateError as exc:
        if exc.code != Code.INCOMPATIBLE_VERSION:
            raise
        older = best_common_version(
            conf.cni_version, delegate.supported_versions(plugin, conf.cni_version)
        )
        if older is None or older == conf.cni_version:
            raise
        log(f"{plugin.name} does not speak {conf.cni_version}; delegating with {older}")
        config["cniVersion"] = older
        cache.store(conf.data_dir, attachment, config)
        output = delegate.invoke(plugin, "ADD", env, config)
    _name_attachment(inv, conf, subnet.subnet.network, output)
    if config["cniVersion"] == conf.cni_version:
        return output
    result = _decode(output, allow_empty=False)
    return _dump(convert_result(result, conf.cni_version))


def _name_attachment(inv: Invocation, conf: NetConf, subnet: IPv4Network, output: bytes) -> None:
    """Register the address the delegate gave the attachment under its container's name."""
    try:
        result = json.loads(output)
    except ValueError:
        return  # not ours to judge here: the runtime reads the result
    address = names.result_address(result, subnet) if isinstance(result, dict) else None
    if address is not None:
        _tell_daemon(conf, names.added(inv.container_id, inv.args, address))


def _tell_daemon(conf: NetConf, registration: Registration | None) -> None:
    """Give the daemon a container's name (docs/dns.md); a failure never fails the command."""
    if conf.names_socket is None or registration is None:
        return
    answer = names.send(conf.names_socket, registration)
    if answer != "ok":
        log(f"container name {registration.name or '(removed)'}: {answer}")


def cmd_del(inv: Invocation, conf: NetConf) -> bytes:
    """Run the delegate's DEL with the cached configuration, then forget it.

    No entry means ADD never got as far as caching, or DEL already ran: nothing to undo.
    A failing delegate keeps the entry so the runtime's retry can finish the job.
    """
    attachment = _attachment(inv, conf)
    _tell_daemon(conf, names.removed(inv.container_id))
    config = cache.load(conf.data_dir, attachment)
    if config is None:
        log(f"DEL {attachment}: no cache entry, nothing to do")
        return b""
    plugin = delegate.find(config["type"], inv.path)
    delegate.invoke(plugin, "DEL", _attachment_env(attachment, inv.netns), config)
    cache.remove(conf.data_dir, attachment)
    return b""


def cmd_check(inv: Invocation, conf: NetConf) -> bytes:
    """Check that the attachment still matches this node's subnet, then run the delegate's
    CHECK (interfaces, addresses, routes in the container) with the cached configuration."""
    attachment = _attachment(inv, conf)
    config = cache.load(conf.data_dir, attachment)
    if config is None:
        raise CniError(
            Code.UNKNOWN_CONTAINER,
            f"no attachment {inv.container_id}/{inv.ifname}",
            f"no cache entry in {conf.data_dir / conf.name}",
        )
    if conf.prev_result is None:
        raise CniError(
            Code.INVALID_NETWORK_CONFIG, "invalid network configuration", "CHECK needs 'prevResult'"
        )
    subnet = read_subnet_file(conf.subnet_file)
    changed = shape_differences(config, delegate_config(conf, subnet, conf.cni_version))
    if changed:
        raise CniError(
            Code.STALE_ATTACHMENT,
            "attachment no longer matches this node's overlay settings",
            f"changed since ADD: {', '.join(changed)}; recreate the container",
        )
    checked = dict(config)
    checked["prevResult"] = convert_result(conf.prev_result, config["cniVersion"])
    plugin = delegate.find(config["type"], inv.path)
    delegate.invoke(plugin, "CHECK", _attachment_env(attachment, inv.netns), checked)
    return b""


def _delegate_speaks(plugin: Path, version: str) -> bool:
    return version in delegate.supported_versions(plugin, version)


def cmd_status(inv: Invocation, conf: NetConf) -> bytes:
    """Ready when overlayd has written a subnet and the delegate can be run (and, if it
    implements STATUS itself, says it is ready)."""
    subnet = read_subnet_file(conf.subnet_file)
    if not inv.path:
        return b""
    config = delegate_config(conf, subnet, conf.cni_version)
    plugin = delegate.find(config["type"], inv.path)
    if _delegate_speaks(plugin, conf.cni_version):
        delegate.invoke(plugin, "STATUS", {}, config)
    return b""


def cmd_gc(inv: Invocation, conf: NetConf) -> bytes:
    """Release every cached attachment of this network that the runtime no longer lists.

    Each stale one gets the delegate's DEL (without a netns: the container is gone), which
    frees its host-local address; then, if the delegate speaks 1.1, its own GC runs to
    catch leaks this cache never knew about. Failures do not stop the sweep; they are
    reported together at the end.
    """
    valid = conf.valid_attachments or frozenset()
    failures = []
    for attachment in cache.entries(conf.data_dir, conf.name):
        if (attachment.container_id, attachment.ifname) in valid:
            continue
        try:
            config = cache.load(conf.data_dir, attachment)
            if config is not None:
                plugin = delegate.find(config["type"], inv.path)
                delegate.invoke(plugin, "DEL", _attachment_env(attachment, ""), config)
            cache.remove(conf.data_dir, attachment)
            log(f"GC released {attachment}")
        except (CniError, OSError) as exc:
            failures.append(f"{attachment.container_id}/{attachment.ifname}: {exc}")
    _delegate_gc(inv, conf, valid)
    if failures:
        raise CniError(
            Code.GC_INCOMPLETE,
            f"GC could not release {len(failures)} attachments",
            "; ".join(failures),
        )
    return b""


def _delegate_gc(inv: Invocation, conf: NetConf, valid: frozenset[tuple[str, str]]) -> None:
    """Pass GC on to a delegate that implements it. Its configuration comes from the
    current subnet file; without one there is nothing to describe the delegate with."""
    try:
        subnet = read_subnet_file(conf.subnet_file)
    except (ConfigError, OSError) as exc:
        log(f"GC: not passing GC to the delegate: {exc}")
        return
    config = delegate_config(conf, subnet, conf.cni_version)
    plugin = delegate.find(config["type"], inv.path)
    if not _delegate_speaks(plugin, conf.cni_version):
        return
    config["cni.dev/valid-attachments"] = [
        {"containerID": c, "ifname": i} for c, i in sorted(valid)
    ]
    delegate.invoke(plugin, "GC", {}, config)


_HANDLERS = {
    "ADD": cmd_add,
    "DEL": cmd_del,
    "CHECK": cmd_check,
    "STATUS": cmd_status,
    "GC": cmd_gc,
}


def main(
    environ: Mapping[str, str] | None = None,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
) -> int:
    """Run the plugin; the exit status is 0 on success, 1 after printing a CNI error."""
    environ = os.environ if environ is None else environ
    stdin = sys.stdin.buffer if stdin is None else stdin
    stdout = sys.stdout.buffer if stdout is None else stdout
    command = environ.get("CNI_COMMAND", "")
    version = LATEST_VERSION
    try:
        data = stdin.read()
        version = _reply_version(data)
        inv = Invocation.from_environ(environ)
        output = run(inv, data)
    except Exception as exc:  # every failure must become CNI JSON, never a traceback
        error = to_cni_error(exc, command)
        if os.environ.get(DEBUG_ENV):
            import traceback  # only on the failure path: it is costly to import

            traceback.print_exc(file=sys.stderr)
        stdout.write(_dump(error.to_json(version)))
        stdout.flush()
        return 1
    stdout.write(output)
    stdout.flush()
    return 0


def _reply_version(data: bytes) -> str:
    """The version to label an error with: the runtime's if we speak it, else our latest."""
    try:
        version = json.loads(data).get("cniVersion")
    except (ValueError, AttributeError):
        return LATEST_VERSION
    return version if version in SUPPORTED_VERSIONS else LATEST_VERSION
