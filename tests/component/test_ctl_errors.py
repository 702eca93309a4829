"""overlayctl (and overlayd's command line) never end in a traceback: an unreachable or
failing store, bad flags and bugs each give one clear line and a documented exit code."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from overlayd.cli import daemon_main
from overlayd.cli.common import EXIT_INTERNAL, friendly_errors
from overlayd.cli.context import CtlContext
from overlayd.cli.ctl import main
from overlayd.store.api import Snapshot
from overlayd.store.memory import MemStore
from overlayd.values.errors import TLS_HINT, StoreError
from tests.component.ctl import Ctl
from tests.lab.certs import make_pki
from tests.lab.etcd import free_ports


@pytest.fixture
def root_logging() -> Iterator[None]:
    """overlayd's entry point sets up logging (on the runner's stderr) before it checks the
    endpoints: put the root logger back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


# one of each command that reads or writes the store
STORE_COMMANDS = [
    ["network", "init", "--network", "10.244.0.0/16"],
    ["network", "show"],
    ["leases", "list"],
    ["leases", "list", "-o", "json"],
    ["leases", "show", "a"],
    ["leases", "reserve", "10.244.1.0/24", "--node", "a"],
    ["leases", "unreserve", "10.244.1.0/24"],
    ["leases", "reservations"],
    ["leases", "reservations", "-o", "json"],
    ["leases", "revoke", "a"],
    ["node", "rotate-key", "a"],
    ["plan", "--node", "a"],
    ["plan", "--node", "a", "-o", "json"],
    ["gateways"],
    ["gateways", "-o", "json"],
]
# and the one that asks a daemon's health port instead of the store
ALL_COMMANDS = [*STORE_COMMANDS, ["peers", "--daemon", "http://127.0.0.1:9"]]


class Unreachable(MemStore):
    """A store whose etcd cannot be reached."""

    async def connect(self) -> None:
        raise StoreError("etcd list leases failed: UNAVAILABLE: connection refused")


class FailsLater(MemStore):
    """Connects, then the first call fails (etcd went away mid-command)."""

    async def list_leases(self) -> Snapshot:
        raise StoreError("etcd list leases failed: DEADLINE_EXCEEDED")

    async def get_config_text(self) -> str:
        raise StoreError("etcd get config failed: DEADLINE_EXCEEDED")

    async def delete_reservation(self, subnet: IPv4Network) -> bool:
        raise StoreError("etcd delete reservation failed: DEADLINE_EXCEEDED")

    async def list_reservations(self) -> dict[IPv4Network, str]:
        raise StoreError("etcd list reservations failed: DEADLINE_EXCEEDED")


class Buggy(MemStore):
    """A store with a bug in it: what overlayctl does with an exception it does not know."""

    async def list_leases(self) -> Snapshot:
        raise RuntimeError("boom\nsecond line")


class BuggyConnect(MemStore):
    """A bug before any command's own work: every store command meets it."""

    async def connect(self) -> None:
        raise KeyError("bug")


class Interrupted(MemStore):
    """Ctrl-C while the store is being reached."""

    async def connect(self) -> None:
        raise KeyboardInterrupt


@pytest.mark.parametrize("args", STORE_COMMANDS, ids=" ".join)
def test_unreachable_store_is_one_error_and_a_hint(args: list[str]) -> None:
    result = Ctl(Unreachable())(*args, code=1)
    assert result.stderr.splitlines() == [
        "error: etcd list leases failed: UNAVAILABLE: connection refused",
        "hint: check --etcd-endpoints and that etcd is running",
    ]
    assert result.stdout == ""


@pytest.mark.parametrize("args", STORE_COMMANDS, ids=" ".join)
def test_store_failing_mid_command(args: list[str]) -> None:
    ctl = Ctl(FailsLater())
    result = ctl(*args, code=1)
    assert result.stderr.startswith("error: etcd ")
    assert "DEADLINE_EXCEEDED" in result.stderr


def test_unreachable_real_etcd() -> None:
    """The real store and client against a port nobody listens on."""
    (port,) = free_ports(1)
    result = CliRunner().invoke(main, ["--etcd-endpoints", f"127.0.0.1:{port}", "leases", "list"])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: etcd ")
    assert "hint: check --etcd-endpoints" in result.stderr


@pytest.mark.parametrize(
    "endpoints",
    ["foo", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999", "ftp://h:1", "h:port", ":2379",
     "127.0.0.1:2379,bad", "a b:1"],
)  # fmt: skip
def test_bad_endpoints_are_a_usage_error_naming_them(endpoints: str, root_logging: None) -> None:
    ctl_args = ["--etcd-endpoints", endpoints, "leases", "list"]
    daemon_args = ["--etcd-endpoints", endpoints, "--healthz-port", "0"]  # refused at once
    for cli, args in ((main, ctl_args), (daemon_main.main, daemon_args)):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output
        assert "--etcd-endpoints" in result.stderr
        bad = endpoints.split(",")[-1]
        assert repr(bad) in result.stderr


def test_good_endpoints_pass_the_check() -> None:
    ctl = Ctl()
    obj = CtlContext(store_factory=ctl.factory)
    good = ["127.0.0.1:2379", "http://10.0.0.1:2379/", "https://etcd.example:2379", "a:1, b:2"]
    for endpoints in good:
        args = ["--etcd-endpoints", endpoints, "leases", "list"]
        result = CliRunner().invoke(main, args, obj=obj)
        assert result.exit_code == 0, result.output


def test_unexpected_exception_is_one_line_exit_70() -> None:
    result = Ctl(Buggy())("leases", "list", code=EXIT_INTERNAL)
    assert result.stderr.splitlines() == [
        "error: internal error: RuntimeError: boom; rerun with --debug"
    ]


def test_debug_shows_the_traceback() -> None:
    ctl = Ctl(Buggy())
    obj = CtlContext(store_factory=ctl.factory)
    result = CliRunner().invoke(main, ["--debug", "leases", "list"], obj=obj)
    assert isinstance(result.exception, RuntimeError)  # escapes: python prints the traceback
    ok = CliRunner().invoke(main, ["--debug", "leases", "show", "x"], obj=obj)
    assert isinstance(ok.exception, RuntimeError)


def test_our_errors_with_debug_raise_too() -> None:
    ctl = Ctl(Unreachable())
    obj = CtlContext(store_factory=ctl.factory)
    result = CliRunner().invoke(main, ["--debug", "network", "show"], obj=obj)
    assert isinstance(result.exception, StoreError)


def test_usage_errors_stay_click_usage_errors() -> None:
    ctl = Ctl()
    assert "No such command" in ctl("nope", code=2).stderr
    assert "Missing option '--network'" in ctl("network", "init", code=2).stderr
    assert ctl("--help").stdout.startswith("Usage:")
    assert "Exit codes" in ctl("--help").stdout


def test_friendly_errors_on_any_command() -> None:
    """The wrapper overlayd's own entry point uses."""

    @click.command()
    @click.option("--debug", is_flag=True)
    @click.option("--crash", is_flag=True)
    @friendly_errors
    def cmd(debug: bool, crash: bool) -> None:
        if crash:
            raise KeyError("x")
        raise StoreError("etcd went away")

    runner = CliRunner()
    store = runner.invoke(cmd, [])
    assert store.exit_code == 1 and store.stderr.startswith("error: etcd went away\nhint: ")
    bug = runner.invoke(cmd, ["--crash"])
    assert bug.exit_code == EXIT_INTERNAL
    assert bug.stderr == "error: internal error: KeyError: 'x'; rerun with --debug\n"
    assert isinstance(runner.invoke(cmd, ["--crash", "--debug"]).exception, KeyError)


def test_our_error_inside_a_task_group_is_still_ours() -> None:
    """The daemon's errors come out of asyncio.TaskGroup wrapped in an ExceptionGroup."""

    @click.command()
    @click.option("--debug", is_flag=True)
    @click.option("--many", is_flag=True)
    @friendly_errors
    def cmd(debug: bool, many: bool) -> None:
        inner = [StoreError("etcd went away")] + ([ValueError("v")] if many else [])
        raise ExceptionGroup("unhandled errors in a TaskGroup", [ExceptionGroup("g", inner)])

    one = CliRunner().invoke(cmd, [])
    assert one.exit_code == 1 and one.stderr.startswith("error: etcd went away\n")
    many = CliRunner().invoke(cmd, ["--many"])
    assert many.exit_code == EXIT_INTERNAL
    assert many.stderr.startswith("error: internal error: ExceptionGroup: ")


@pytest.mark.parametrize("args", ALL_COMMANDS, ids=" ".join)
@pytest.mark.parametrize("endpoints", ["foo", "127.0.0.1:2379,bad", "https://a:1,b:2"])
def test_every_command_checks_the_endpoints_first(args: list[str], endpoints: str) -> None:
    """Checked when the flags are parsed: before the store, the daemon or any argument."""
    result = Ctl()("--etcd-endpoints", endpoints, *args, code=2)
    assert "--etcd-endpoints" in result.stderr and result.stdout == ""


@pytest.mark.parametrize("args", STORE_COMMANDS, ids=" ".join)
@pytest.mark.parametrize("kind", ["missing", "directory", "not PEM"])
def test_every_store_command_names_an_unreadable_tls_file(
    args: list[str], kind: str, tmp_path: Path
) -> None:
    """The real store reads the files before it dials etcd: exit 2 and which file."""
    files = {"missing": tmp_path / "none.pem", "directory": tmp_path, "not PEM": tmp_path / "x"}
    (tmp_path / "x").write_text("not a certificate\n")
    cafile = files[kind]
    result = CliRunner().invoke(main, ["--etcd-cafile", str(cafile), *args])
    assert result.exit_code == 2, result.output
    (line, hint) = result.stderr.splitlines()
    assert line.startswith("error: ") and f"--etcd-cafile {cafile}" in line
    assert hint == f"hint: {TLS_HINT}"
    assert result.stdout == ""


def test_an_unreadable_client_certificate_or_key(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    for flags, named in (
        (["--etcd-certfile", str(tmp_path / "no.pem"), "--etcd-keyfile", str(pki.client.key)],
         "--etcd-certfile"),
        (["--etcd-certfile", str(pki.client.cert), "--etcd-keyfile", str(tmp_path)],
         "--etcd-keyfile"),
    ):  # fmt: skip
        args = ["--etcd-endpoints", "https://127.0.0.1:2379", *flags, "leases", "list"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith(f"error: cannot read {named} ")


@pytest.mark.parametrize("args", STORE_COMMANDS, ids=" ".join)
def test_a_bug_in_any_store_command_is_one_line_exit_70(args: list[str]) -> None:
    result = Ctl(BuggyConnect())(*args, code=EXIT_INTERNAL)
    assert result.stderr == "error: internal error: KeyError: 'bug'; rerun with --debug\n"
    assert result.stdout == ""


def test_interrupted_exits_130_without_a_traceback() -> None:
    result = Ctl(Interrupted())("leases", "list", code=130)
    assert result.stderr == ""
