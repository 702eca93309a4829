"""Issue 14: the web console in a real headless Chromium against the multi-cloud world.

The console runs in a2's namespace (it reaches etcd) on loopback, the browser in the same
namespace (tests/lab/browser.py). The overview shows every node; the matrix shows every
pair green, a pair turns red within 10 s of being broken with nft (a1 drops everything of
b1's public address) and green again after restore; a reservation made through the form
is in etcd; the topology picture loads; a console bound beyond loopback refuses a request
without its token and lets the login form in. Screenshots go to the test's directory.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemons import BIN, init_network, ns_run, running, wait_until
from tests.lab.browser import Browser
from tests.lab.world import World, drop_between, multicloud_world

pytestmark = pytest.mark.root
HOSTS = ("a1", "a2", "b1", "b2", "bare")
SERVING = re.compile(r"console serving (http://\S+)")


@contextlib.contextmanager
def console(world: World, *args: str) -> Iterator[str]:
    """``overlayctl console`` in a2's namespace; its URL. Stopped by its PID."""
    argv = [str(BIN / "overlayctl"), "--etcd-endpoints", world.etcd_endpoint, "console", *args]
    proc = world.host("a2").ns.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        found = SERVING.search(line)
        assert found is not None, f"console did not start: {line!r}"
        yield found.group(1)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def browser(world: World, workdir: Path) -> Iterator[Browser]:
    chromium = Browser(world.host("a2").ns, workdir)
    try:
        yield chromium
    finally:
        chromium.close()


def matrix_states(chromium: Browser, url: str) -> list[str]:
    """The node matrix's cell states, the diagonal left out (a fresh load of the page)."""
    chromium.open(url + "matrix")
    return [s for s in chromium.attributes("#node-matrix td", "data-state") if s != "self"]


def cell(chromium: Browser, url: str, row: str, col: str) -> str:
    """The state of the node matrix's cell of ``row`` to ``col``."""
    chromium.open(url + "matrix")
    labels = chromium.text("#node-matrix tr:first-child th")[1:]
    states = chromium.attributes("#node-matrix td", "data-state")
    n = len(labels)
    return states[labels.index(row) * n + labels.index(col)]


def test_console_in_a_browser(prefix: str, tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with multicloud_world(prefix, workdir=tmp_path) as world:
        init_network(world, "vxlan")
        with (
            running(world, HOSTS, public_ip=False) as daemons,
            console(world) as url,
            browser(world, tmp_path) as chromium,
        ):
            chromium.open(url)
            assert set(HOSTS) <= set(chromium.text("#nodes td a"))
            chromium.screenshot(shots / "overview.png")

            took = wait_until(
                lambda: matrix_states(chromium, url) == ["ok"] * 20, 60, "every pair green"
            )
            print(f"every pair green {took:.1f}s after the daemons were ready")
            sites = chromium.attributes("#site-matrix td", "data-state")
            assert sites.count("ok") == 8 and sites.count("none") == 1  # bare's own cell
            chromium.screenshot(shots / "matrix.png")

            b1_public = world.host("b1").public
            assert b1_public is not None
            with drop_between(daemons["a1"].host.ns, b1_public):
                took = wait_until(
                    lambda: cell(chromium, url, "a1", "b1") == "broken", 10, "a1 -> b1 red"
                )
                print(f"a1 -> b1 red {took:.1f}s after the block")
                chromium.screenshot(shots / "matrix-broken.png")
            took = wait_until(
                lambda: matrix_states(chromium, url) == ["ok"] * 20, 60, "green again"
            )
            print(f"every pair green again {took:.1f}s after restore")

            chromium.open(url + "leases")
            chromium.fill("#reserve", {"subnet": "10.244.200.0/24", "node": "reserved-1"})
            page = chromium.click("#reserve button")
            assert "Reserve 10.244.200.0/24 for node" in page
            assert "reserved-1" not in ctl(world, "leases", "reservations")  # not yet
            page = chromium.click("#confirm-yes")
            assert "reserved 10.244.200.0/24" in page
            chromium.screenshot(shots / "reserved.png")
            found = json.loads(ctl(world, "leases", "reservations", "-o", "json"))
            assert found == [{"node": "reserved-1", "subnet": "10.244.200.0/24"}]

            chromium.open(url + "topology")
            assert int(chromium.attributes("#topology", "naturalWidth")[0]) > 0  # drawn
            chromium.screenshot(shots / "topology.png")


def ctl(world: World, *args: str) -> str:
    argv = [str(BIN / "overlayctl"), "--etcd-endpoints", world.etcd_endpoint, *args]
    return ns_run(world.host("a2").ns.name, *argv).stdout


def test_console_beyond_loopback_needs_the_token(prefix: str, tmp_path: Path) -> None:
    token = secrets.token_urlsafe(24)
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    with multicloud_world(prefix, workdir=tmp_path) as world:
        init_network(world, "vxlan")
        a2 = world.host("a2").ip
        refused = world.host("a2").ns.run(
            [str(BIN / "overlayctl"), "--etcd-endpoints", world.etcd_endpoint, "console",
             "--listen", f"{a2}:0"], check=False,
        )  # fmt: skip
        assert refused.returncode == 2 and "hint: give --token-file" in refused.stderr
        listen = ("--listen", f"{a2}:0", "--token-file", str(token_file))
        with console(world, *listen) as url, browser(world, tmp_path) as chromium:
            page = chromium.open(url)
            assert 'id="login"' in page and "10.244.0.0/16" not in page
            chromium.screenshot(tmp_path / "login.png")
            chromium.fill("#login", {"token": "not-the-token"})
            assert "wrong token" in chromium.click("#login button")
            chromium.fill("#login", {"token": token})
            page = chromium.click("#login button")
            assert "10.244.0.0/16" in page and 'id="login"' not in page
            assert "10.244.0.0/16" in chromium.open(url + "network")  # the cookie goes along
