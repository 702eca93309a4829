"""Issue 12: a daemon imports only what its configuration uses.

Each daemon runs with ``--debug`` and, once its last peer is programmed, logs the packages
it has loaded (overlayd/runtime/phases.py). A plain VXLAN network never loads the
WireGuard drivers, scapy, overlayctl's commands or pyroute2 (the data plane speaks netlink
itself); a WireGuard one does load its driver (so the check can tell).
"""

from __future__ import annotations

import re
from functools import partial

import pytest

from tests.daemons import OverlaydProc, init_network, running, wait_until
from tests.lab.world import build_lan_world, destroy

pytestmark = pytest.mark.root

LOADED = re.compile(r"loaded at start-up: \d+ packages: (.*)$", re.MULTILINE)
PHASE = re.compile(r"start-up phase (.+) at [\d.]+ s")
WIREGUARD_DRIVER = "overlayd.dataplane.wireguard.driver"
NEVER = (
    "scapy",
    "pyroute2",
    "overlayd.cli.ctl",
    "overlayd.cli.ctl_leases",
    "overlayd.cli.planview",
)


def loaded(d: OverlaydProc) -> list[str] | None:
    """The packages ``d`` logged as loaded at start-up (None: not logged yet)."""
    found = LOADED.search(d.log_file.read_text())
    return found.group(1).split() if found else None


def _logged(d: OverlaydProc) -> bool:
    return loaded(d) is not None


def start_packages(prefix: str, backend: str) -> dict[str, tuple[list[str], list[str]]]:
    """Per host of a two-host LAN running ``backend``: the packages loaded at start-up and
    the phases logged."""
    world = build_lan_world(prefix, 2)
    try:
        init_network(world, backend)
        with running(world, ["h1", "h2"], extra=("--debug",)) as daemons:
            for d in daemons.values():
                wait_until(partial(_logged, d), 30, f"{d.node} logs its loaded packages")
            return {
                name: (loaded(d) or [], PHASE.findall(d.log_file.read_text()))
                for name, d in daemons.items()
            }
    finally:
        destroy(world)


def test_a_vxlan_daemon_loads_no_wireguard_driver(prefix: str) -> None:
    for name, (packages, phases) in start_packages(prefix, "vxlan").items():
        wireguard = [p for p in packages if p.startswith("overlayd.dataplane.wireguard")]
        assert wireguard == [], name
        assert [p for p in NEVER if p in packages] == [], name
        assert phases[0] == "imports" and "last peer programmed" in phases, (name, phases)
        assert len(phases) == len(set(phases)), (name, phases)


def test_a_wireguard_daemon_loads_its_driver(prefix: str) -> None:
    for name, (packages, _phases) in start_packages(prefix, "wireguard").items():
        assert WIREGUARD_DRIVER in packages, name
        assert [p for p in NEVER if p in packages] == [], name
