"""Issue 11: two 1:1-NAT clouds and no public host. Each host learns its elastic IP from
its cloud's metadata API or from STUN; with neither, it says so and guesses nothing.

Every world is ``build_multicloud_world(public_host=False)``: hosts a1-a3 (cloud A) and
b1, b2 (cloud B), each with an elastic IP that exists only on its router; no host has a
public address on its interface, and no daemon is given ``--public-ip``.

* ``metadata``: cloud A's router serves AWS's metadata API, cloud B's GCP's, and the daemons
  get no flags at all (``--cloud-metadata`` defaults to ``auto``): the full overlay matrix
  with each backend, and every host's lease ends with its elastic IP in ``PublicIPs`` (a
  peer of the other cloud verified the candidate).
* ``stun``: no metadata; one ``--stun-server`` (coturn on the internet): the full matrix.
* ``neither``: a1 logs one ``no public address learned`` line naming the flags that would
  fix it, and during ``WINDOW`` nothing leaves router A for cloud B's private range; with
  colliding ranges (cloud B's private addresses are cloud A's: b1's is a1's own, b2's is
  a2's, and a2 runs no daemon here) a1 sends no overlay or probe packet to any of them,
  not even while it pings b1's and b2's overlay addresses.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from functools import partial

import pytest

from tests.daemons import (
    BIN,
    OverlaydProc,
    full_matrix,
    ns_run,
    running,
    wait_until,
)
from tests.integration.conftest import WorldMaker
from tests.lab.netns import Namespace
from tests.lab.services import turnserver_available
from tests.lab.world import World, counter_packets, ping

pytestmark = pytest.mark.root
HOSTS = ("a1", "a2", "a3", "b1", "b2")
BACKENDS = ("vxlan", "wireguard", "vxlan+wireguard")
METADATA = {"cloud-a": "aws", "cloud-b": "gcp"}
OVERLAY_PORTS = "{ 8472, 8473, 51820 }"  # VXLAN, path probes, WireGuard
NO_ADDRESS = "no public address learned"
FIX_FLAGS = ("--public-ip", "--stun-server", "--cloud-metadata")
WINDOW = 10.0
"""Seconds the ``neither`` worlds are watched (for the message, and for stray packets)."""
MATRIX_TIMEOUT = 30.0
"""Seconds the first pair may take: discovery, then verification by the other cloud."""
COUNTERS = "ovtest"


@pytest.fixture(scope="module", params=BACKENDS)
def metadata_daemons(
    request: pytest.FixtureRequest, make_world: WorldMaker
) -> Iterator[tuple[World, dict[str, OverlaydProc]]]:
    for world in make_world(request.param, public_host=False, metadata=METADATA):
        with running(world, HOSTS, public_ip=False) as procs:
            yield world, procs


@pytest.fixture(scope="module")
def stun_daemons(make_world: WorldMaker) -> Iterator[tuple[World, dict[str, OverlaydProc]]]:
    if not turnserver_available():
        pytest.skip("needs coturn (scripts/setup)")
    for world in make_world("vxlan+wireguard", public_host=False, stun=True):
        assert world.stun_endpoint is not None
        extra = ("--stun-server", world.stun_endpoint)
        with running(world, HOSTS, public_ip=False, extra=extra) as procs:
            yield world, procs


def public_ips(world: World, name: str) -> list[str]:
    """``PublicIPs`` of ``name``'s lease (``overlayctl leases show``; [] while it has none)."""
    out = ns_run(world.host(name).ns.name, str(BIN / "overlayctl"), "--etcd-endpoints",
                 world.etcd_endpoint, "leases", "show", name, check=False).stdout  # fmt: skip
    if not out.strip():
        return []
    listed: list[str] = json.loads(out)["public_ips"]
    return listed


def publishes_its_elastic_ip(world: World, name: str) -> bool:
    return str(world.host(name).public) in public_ips(world, name)


def assert_elastic_ips_published(world: World) -> None:
    for name in HOSTS:
        wait_until(partial(publishes_its_elastic_ip, world, name), MATRIX_TIMEOUT,
                   f"{name}'s lease lists {world.host(name).public} in PublicIPs")  # fmt: skip


# --- metadata present, no flags ---


def test_metadata_alone_gives_the_full_matrix(
    metadata_daemons: tuple[World, dict[str, OverlaydProc]],
) -> None:
    _, procs = metadata_daemons
    full_matrix(procs, timeout=MATRIX_TIMEOUT)


def test_metadata_addresses_are_verified_into_the_leases(
    metadata_daemons: tuple[World, dict[str, OverlaydProc]],
) -> None:
    world, _ = metadata_daemons
    assert_elastic_ips_published(world)


# --- no metadata, one STUN server ---


def test_stun_alone_gives_the_full_matrix(
    stun_daemons: tuple[World, dict[str, OverlaydProc]],
) -> None:
    world, procs = stun_daemons
    full_matrix(procs, timeout=MATRIX_TIMEOUT)
    assert_elastic_ips_published(world)


# --- neither: a clear message, and no guesses ---


def count_leaks_on_router(world: World) -> Callable[[], int]:
    """Count, on router A, every packet leaving by its internet side for cloud B's LAN."""
    router = world.router("cloud-a")
    lan_b = world.router("cloud-b").inside.network
    router.ns.nft(
        f"""
        table ip {COUNTERS} {{
          counter leak {{ }}
          chain to_wan {{
            type filter hook forward priority filter;
            oifname "{router.outside_if}" ip daddr {lan_b} counter name leak
          }}
        }}
        """
    )
    return partial(counter_packets, router.ns, COUNTERS, "leak")


def count_guesses_from(world: World, name: str) -> Callable[[], int]:
    """Count overlay and probe packets that ``name`` sends to a cloud-B private address.

    Counted in ``name``'s own namespace as they are sent (output hook), so whatever the
    address is in cloud A (behind the router, a neighbour's on the LAN, the host's own
    over loopback when ranges collide), every such packet is seen.
    """
    ns: Namespace = world.host(name).ns
    private_b = ", ".join(str(h.ip) for h in world.site_hosts("cloud-b"))
    ns.nft(
        f"""
        table ip {COUNTERS} {{
          counter guess {{ }}
          chain out {{
            type filter hook output priority filter;
            ip daddr {{ {private_b} }} udp dport {OVERLAY_PORTS} counter name guess
          }}
        }}
        """
    )
    return partial(counter_packets, ns, COUNTERS, "guess")


def no_address_lines(d: OverlaydProc) -> list[str]:
    """The log lines whose message starts ``no public address learned``."""
    try:
        text = d.log_file.read_text()
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if f": {NO_ADDRESS}" in line]


@pytest.fixture(scope="module", params=[False, True], ids=["distinct", "colliding"])
def bare_world(request: pytest.FixtureRequest, make_world: WorldMaker) -> Iterator[World]:
    """Neither metadata nor STUN."""
    yield from make_world("vxlan+wireguard", public_host=False, colliding=request.param)


def test_nothing_learned_is_said_once_and_nothing_is_guessed(bare_world: World) -> None:
    world = bare_world
    leaks, guesses = count_leaks_on_router(world), count_guesses_from(world, "a1")
    hosts = ("a1", "a3", "b1", "b2")  # not a2: in the colliding world its address is b2's
    start = time.monotonic()
    with running(world, hosts, public_ip=False) as procs:
        a1 = procs["a1"]
        wait_until(lambda: bool(no_address_lines(a1)), WINDOW, f"a1 logs {NO_ADDRESS!r}")
        wait_until(partial(a1.pings, procs["a3"]), WINDOW, "a1 -> a3 (in site)")
        for name in ("b1", "b2"):  # overlay traffic for the other cloud: where does it go?
            ping(a1.host.ns, procs[name].overlay_ip(), count=10, timeout=1)
        time.sleep(max(0.0, WINDOW - (time.monotonic() - start)))
        lines = no_address_lines(a1)
        assert len(lines) == 1, lines
        assert all(flag in lines[0] for flag in FIX_FLAGS), lines[0]
        assert leaks() == 0, "packets left router A for cloud B's private range"
        assert guesses() == 0, f"a1 sent to cloud B's private addresses:\n{a1.log()}"
        assert not public_ips(world, "a1")
