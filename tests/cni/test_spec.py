"""Spec-level tests: the plugin executable driven by CNI environment and stdin.

Everything here runs without root: the failures are caught before the delegate touches the
system, or the delegate is not reached at all.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from overlayd.cni.errors import Code
from overlayd.cni.spec import SUPPORTED_VERSIONS, version_key
from tests.cni.cnitest import Node, Reply, assert_cni_error, attach_env, run_plugin

VERSIONS = list(SUPPORTED_VERSIONS)
ATTACH_COMMANDS = ["ADD", "DEL", "CHECK"]
CHECK_VERSIONS = [v for v in VERSIONS if version_key(v) >= (0, 4, 0)]


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


def _env(netns: str = "/run/netns/ovcni-absent") -> dict[str, str]:
    env = attach_env("ctr1", None)
    env["CNI_NETNS"] = netns
    return env


@pytest.mark.parametrize("version", VERSIONS)
def test_version_answers_every_supported_version(version: str) -> None:
    reply = run_plugin("VERSION", {"cniVersion": version})
    assert reply.exit_code == 0, reply
    assert reply.json == {"cniVersion": version, "supportedVersions": VERSIONS}


def test_version_with_empty_stdin_answers_latest() -> None:
    reply = run_plugin("VERSION", b"")
    assert reply.exit_code == 0, reply
    assert reply.json["cniVersion"] == "1.1.0"


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "STATUS", "GC"])
@pytest.mark.parametrize("version", ["0.1.0", "0.2.0", "1.2.0", "2.0.0", "latest"])
def test_unknown_version_is_code_1(node: Node, command: str, version: str) -> None:
    reply = run_plugin(command, node.netconf(version), _env())
    assert_cni_error(reply, Code.INCOMPATIBLE_VERSION, "1.1.0")


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1"])
def test_check_needs_0_4_0(node: Node, version: str) -> None:
    reply = run_plugin("CHECK", node.netconf(version), _env())
    assert_cni_error(reply, Code.INCOMPATIBLE_VERSION, version)


@pytest.mark.parametrize("command", ["STATUS", "GC"])
@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_status_and_gc_need_1_1_0(node: Node, command: str, version: str) -> None:
    conf = node.netconf(version, **{"cni.dev/valid-attachments": []})
    reply = run_plugin(command, conf, attach_env("x", None))
    assert_cni_error(reply, Code.INCOMPATIBLE_VERSION, version)


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "STATUS", "GC"])
@pytest.mark.parametrize("stdin", [b"{not json", b"", b"[1, 2]", b'"text"'])
def test_undecodable_stdin_is_code_6(command: str, stdin: bytes) -> None:
    reply = run_plugin(command, stdin, _env())
    assert_cni_error(reply, Code.DECODING_FAILURE)


def test_missing_cni_version_is_code_7(node: Node) -> None:
    conf = node.netconf("1.0.0")
    del conf["cniVersion"]
    assert_cni_error(run_plugin("ADD", conf, _env()), Code.INVALID_NETWORK_CONFIG)


@pytest.mark.parametrize(
    "extra",
    [
        {"name": "bad name"},
        {"name": ""},
        {"subnetFile": 17},
        {"dataDir": ["x"]},
        {"delegate": "bridge"},
        {"delegate": {"name": "other"}},
        {"delegate": {"cniVersion": "0.3.1"}},
        {"delegate": {"type": "../bin/sh"}},
    ],
    ids=str,
)
def test_invalid_netconf_is_code_7(node: Node, extra: dict[str, object]) -> None:
    node.write_subnet()
    reply = run_plugin("ADD", node.netconf("1.0.0", **extra), _env())
    assert_cni_error(reply, Code.INVALID_NETWORK_CONFIG, "1.0.0")


def test_missing_command_is_code_4(node: Node) -> None:
    reply = run_plugin("", node.netconf("1.0.0"), _env())
    assert_cni_error(reply, Code.INVALID_ENVIRONMENT)


def test_unknown_command_is_code_4(node: Node) -> None:
    reply = run_plugin("UPDATE", node.netconf("1.0.0"), _env())
    assert_cni_error(reply, Code.INVALID_ENVIRONMENT)


REQUIRED = {
    "ADD": ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
    "CHECK": ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
    "DEL": ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
    "GC": ["CNI_PATH"],
}


@pytest.mark.parametrize(
    ("command", "variable"), [(c, v) for c, names in REQUIRED.items() for v in names]
)
def test_missing_environment_is_code_4(node: Node, command: str, variable: str) -> None:
    env = _env()
    del env[variable]
    conf = node.netconf("1.1.0", **{"cni.dev/valid-attachments": []})
    reply = run_plugin(command, conf, env)
    body = assert_cni_error(reply, Code.INVALID_ENVIRONMENT, "1.1.0")
    assert variable in body["msg"]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CNI_CONTAINERID", "-leading-dash"),
        ("CNI_CONTAINERID", "has/slash"),
        ("CNI_CONTAINERID", "has@at"),
        ("CNI_IFNAME", "x" * 16),
        ("CNI_IFNAME", "eth/0"),
        ("CNI_IFNAME", ".."),
    ],
)
@pytest.mark.parametrize("command", ATTACH_COMMANDS)
def test_unsafe_ids_are_code_4(node: Node, command: str, variable: str, value: str) -> None:
    env = _env()
    env[variable] = value
    assert_cni_error(run_plugin(command, node.netconf("1.0.0"), env), Code.INVALID_ENVIRONMENT)


@pytest.mark.parametrize("version", VERSIONS)
def test_add_without_subnet_file_is_code_11(node: Node, version: str) -> None:
    reply = run_plugin("ADD", node.netconf(version), _env())
    body = assert_cni_error(reply, Code.TRY_AGAIN_LATER, version)
    assert str(node.subnet_file) in body["details"]
    assert node.cache_entries() == []


def test_add_with_malformed_subnet_file_is_code_11(node: Node) -> None:
    node.subnet_file.parent.mkdir(parents=True)
    node.subnet_file.write_text("OVERLAY_NETWORK=10.244.0.0/16\nOVERLAY_MTU=lots\n")
    assert_cni_error(run_plugin("ADD", node.netconf("1.0.0"), _env()), Code.TRY_AGAIN_LATER)


@pytest.mark.parametrize("version", VERSIONS)
def test_add_without_bridge_in_cni_path_is_code_100(
    node: Node, tmp_path: Path, version: str
) -> None:
    node.write_subnet()
    env = _env()
    env["CNI_PATH"] = f"{tmp_path / 'empty'}:{tmp_path / 'also-empty'}"
    body = assert_cni_error(run_plugin("ADD", node.netconf(version), env), 100, version)
    assert "bridge" in body["msg"]
    assert node.cache_entries() == [], "nothing to undo: no cache entry"


def test_delegate_that_crashes_is_code_101(node: Node, tmp_path: Path) -> None:
    """A delegate that dies without printing a CNI error (here: ``false``)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "bridge").symlink_to("/bin/false")
    node.write_subnet()
    env = _env()
    env["CNI_PATH"] = str(bin_dir)
    body = assert_cni_error(run_plugin("ADD", node.netconf("1.0.0"), env), Code.DELEGATE_FAILED)
    assert "exit status 1" in body["msg"]
    # ADD cached before delegating; the runtime's DEL after a failed ADD cleans it up.
    assert node.cache_entries() == ["ctr1@eth0"]


@pytest.mark.parametrize("version", VERSIONS)
def test_del_of_unknown_container_is_a_no_op(node: Node, version: str) -> None:
    """No cache entry: success with empty stdout, even with no subnet file and no netns."""
    env = _env()
    del env["CNI_NETNS"]
    reply = run_plugin("DEL", node.netconf(version), env)
    assert (reply.exit_code, reply.stdout) == (0, ""), reply


@pytest.mark.parametrize("version", CHECK_VERSIONS)
def test_check_of_unknown_container_is_code_3(node: Node, version: str) -> None:
    node.write_subnet()
    reply = run_plugin("CHECK", node.netconf(version, prevResult={}), _env())
    assert_cni_error(reply, Code.UNKNOWN_CONTAINER, version)


def test_status_fails_without_subnet_file(node: Node) -> None:
    body = assert_cni_error(run_plugin("STATUS", node.netconf("1.1.0")), Code.NOT_AVAILABLE)
    assert "subnet" in body["msg"]


def test_status_fails_when_subnet_file_is_malformed(node: Node) -> None:
    node.subnet_file.parent.mkdir(parents=True)
    node.subnet_file.write_text("garbage\n")
    assert_cni_error(run_plugin("STATUS", node.netconf("1.1.0")), Code.NOT_AVAILABLE)


def test_status_succeeds_with_subnet_file(node: Node) -> None:
    node.write_subnet()
    reply = run_plugin("STATUS", node.netconf("1.1.0"), {"CNI_PATH": "/usr/lib/cni"})
    assert (reply.exit_code, reply.stdout) == (0, ""), reply


def test_status_fails_when_delegate_is_missing(node: Node, tmp_path: Path) -> None:
    node.write_subnet()
    reply = run_plugin("STATUS", node.netconf("1.1.0"), {"CNI_PATH": str(tmp_path)})
    assert_cni_error(reply, Code.NOT_AVAILABLE)


def test_gc_needs_valid_attachments(node: Node) -> None:
    reply = run_plugin("GC", node.netconf("1.1.0"), {"CNI_PATH": "/usr/lib/cni"})
    assert_cni_error(reply, Code.INVALID_NETWORK_CONFIG)


@pytest.mark.parametrize(
    "attachments", [{"x": 1}, [{"containerID": "a"}], ["a@eth0"]], ids=["object", "no-if", "str"]
)
def test_gc_rejects_malformed_attachments(node: Node, attachments: object) -> None:
    conf = node.netconf("1.1.0", **{"cni.dev/valid-attachments": attachments})
    assert_cni_error(run_plugin("GC", conf, {"CNI_PATH": "/usr/lib/cni"}), 7)


def test_gc_with_nothing_cached_succeeds(node: Node) -> None:
    conf = node.netconf("1.1.0", **{"cni.dev/valid-attachments": []})
    reply = run_plugin("GC", conf, {"CNI_PATH": "/usr/lib/cni"})
    assert (reply.exit_code, reply.stdout) == (0, ""), reply


def test_debug_flag_logs_to_stderr_only(node: Node) -> None:
    env = _env()
    env["OVERLAY_CNI_DEBUG"] = "1"
    del env["CNI_NETNS"]
    reply: Reply = run_plugin("DEL", node.netconf("1.0.0"), env)
    assert reply.exit_code == 0 and reply.stdout == ""
    assert "no cache entry" in reply.stderr


def test_plugin_runs_isolated_from_the_callers_python_environment(node: Node) -> None:
    """``-I``: PYTHONPATH and friends from a runtime's environment change nothing."""
    env = _env()
    env["PYTHONPATH"] = "/nonexistent"
    env["PYTHONSTARTUP"] = "/nonexistent"
    env["PYTHONWARNINGS"] = "error"
    reply = run_plugin("VERSION", {"cniVersion": "1.0.0"}, env)
    assert reply.exit_code == 0 and reply.stderr == "", reply


def test_packaged_conflists_are_valid_and_agree(node: Node) -> None:
    """packaging/cni's conflist and the one in the Kubernetes manifest are the same and
    the plugin accepts its entry (run against this test's subnet file)."""
    repo = Path(__file__).resolve().parents[2]
    conflist = json.loads((repo / "packaging/cni/10-overlay.conflist").read_text())
    manifest = (repo / "packaging/kubernetes/overlayd.yaml").read_text()
    embedded = manifest.split("10-overlay.conflist: |\n", 1)[1].split("\n---", 1)[0]
    assert json.loads(textwrap.dedent(embedded)) == conflist
    assert [p["type"] for p in conflist["plugins"]] == ["overlay", "portmap"]

    node.write_subnet()
    entry = dict(conflist["plugins"][0], name=conflist["name"], cniVersion=conflist["cniVersion"])
    entry.update(subnetFile=str(node.subnet_file), dataDir=str(node.cache_dir))
    reply = run_plugin("STATUS", dict(entry, cniVersion="1.1.0"), {"CNI_PATH": "/usr/lib/cni"})
    assert (reply.exit_code, reply.stdout) == (0, ""), reply
