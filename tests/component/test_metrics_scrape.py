"""``/metrics`` of a running agent on MemStore and the fake data plane (no root): it parses
with prometheus_client's parser, shows the network it runs in, stays small at many peers,
and the status port's rules (methods, limits) hold for it."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.error
import urllib.request
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import dns.asyncquery
import dns.message
from prometheus_client.parser import text_string_to_metric_families

from overlayd.agent.metrics import PATH_KINDS
from overlayd.store.memory import MemStore
from overlayd.values.keys import PublicKey
from overlayd.values.names import DnsListen
from tests.builders import config, wg_key
from tests.component.agent_harness import (
    LOOPBACK,
    NETWORK,
    Agent,
    add_peer,
    agent,
    converged,
    until,
)
from tests.component.fake_dataplane import FakeDataPlane
from tests.component.fake_paths import FakePaths
from tests.unit.test_metrics import FAMILIES

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(port: int, method: str = "GET", path: str = "/metrics") -> tuple[int, str, str]:
    """(status, content type, body) of one request to the agent's status port."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


async def scrape(a: Agent) -> tuple[str, dict[str, Samples]]:
    """The body of ``/metrics`` and its families as Prometheus parses them."""
    status, ctype, body = await asyncio.to_thread(request, a.daemon.opts.healthz_port)
    assert status == 200, body
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
    out: dict[str, Samples] = {}
    for family in text_string_to_metric_families(body):
        samples = out.setdefault(family.name, {})
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return body, out


def peers_by_kind(found: dict[str, Samples]) -> dict[str, float]:
    return {dict(k[1])["kind"]: v for k, v in found["overlayd_peers"].items()}


def total(found: dict[str, Samples], family: str) -> float:
    return sum(v for (name, _), v in found[family].items() if name == f"{family}_total")


def test_an_empty_network_has_every_family_at_zero(tmp_path: Path) -> None:
    async def body() -> None:
        async with agent(tmp_path, paths=FakePaths(), healthz_port=free_port()) as a:
            await until(converged(a), "the first pass")
            _, found = await scrape(a)
            assert set(FAMILIES) - {"overlayd_probes_sent", "overlayd_probe_rejects",
                                    "overlayd_store_errors", "overlayd_store_watch_reconnects",
                                    } <= set(found)  # fmt: skip
            assert peers_by_kind(found) == dict.fromkeys(PATH_KINDS, 0)
            assert total(found, "overlayd_path_changes") == 0
            assert total(found, "overlayd_kernel_operations") == 0
            assert total(found, "overlayd_reconcile_passes") >= 1
            assert found["overlayd_lease_held"][("overlayd_lease_held", ())] == 1
            ttl = found["overlayd_lease_ttl_remaining_seconds"]
            assert 0 < ttl[("overlayd_lease_ttl_remaining_seconds", ())] <= 60  # lease_ttl

    asyncio.run(body())


def test_many_peers_are_counted_by_kind_and_the_scrape_does_not_grow(tmp_path: Path) -> None:
    async def body() -> None:
        paths = FakePaths()
        async with agent(tmp_path, peers=1, paths=paths, healthz_port=free_port()) as a:
            await until(converged(a), "convergence with one peer")
            small, found = await scrape(a)
            assert peers_by_kind(found)["unverified"] == 1
            routes = found["overlayd_kernel_operations"]
            key = (("device", "vxlan"), ("entry", "route"), ("op", "set"))
            assert routes[("overlayd_kernel_operations_total", key)] == 1
        async with agent(tmp_path / "many", peers=200, paths=paths, healthz_port=free_port()) as a:
            await until(converged(a), "convergence with 200 peers")
            for n in range(2, 12):
                paths.verify(IPv4Network(f"10.244.{n}.0/24"))

            async def counted() -> bool:
                return peers_by_kind((await scrape(a))[1])["private"] == 10

            await until(counted, "10 verified peers counted")
            large, found = await scrape(a)
            kinds = peers_by_kind(found)
            assert kinds["private"] == 10 and kinds["unverified"] == 190
            assert sum(kinds.values()) == 200
            routes = found["overlayd_kernel_operations"]
            assert routes[("overlayd_kernel_operations_total", key)] == 200
            # no per-peer series: 200 peers add digits to the values, not lines
            assert len(large.splitlines()) == len(small.splitlines())

    asyncio.run(body())


def test_only_get_and_head_and_the_port_limits_still_apply(tmp_path: Path) -> None:
    async def body() -> None:
        port = free_port()
        async with agent(tmp_path, peers=2, paths=FakePaths(), healthz_port=port) as a:
            await until(converged(a), "convergence")
            await scrape(a)
            head = await asyncio.to_thread(request, port, "HEAD")
            assert head[0] == 200 and head[2] == ""
            post = await asyncio.to_thread(request, port, "POST")
            assert post[0] == 405 and post[1] == "application/json"
            huge = await asyncio.to_thread(request, port, "GET", "/metrics?" + "a" * 5000)
            assert huge[0] == 400  # the request line limit (4,096 bytes)
            flood = [asyncio.to_thread(request, port) for _ in range(20)]
            assert {status for status, _, _ in await asyncio.gather(*flood)} == {200}
            assert a.daemon.status.last_error is None

    asyncio.run(body())


def test_wireguard_peers_and_bytes_from_the_traffic_sample(tmp_path: Path) -> None:
    wg = {"backend_type": "wireguard", "wireguard_port": 51820}
    cfg = config(Network=NETWORK, Backend={"Type": "wireguard"})

    async def body() -> None:
        dp = FakeDataPlane()
        async with agent(
            tmp_path, cfg=cfg, dp=dp, paths=FakePaths(), healthz_port=free_port()
        ) as a:
            for n in (2, 3, 4):
                await add_peer(a.store, n, public_key=wg_key(n), **wg)
            await until(lambda: _programmed(dp, 3), "3 WireGuard peers")
            now = time.time()
            dp.wg_handshakes[PublicKey.from_base64(wg_key(2))] = now - 5  # recent
            dp.wg_handshakes[PublicKey.from_base64(wg_key(3))] = now - 400  # stale
            dp.wg_bytes[PublicKey.from_base64(wg_key(2))] = 1000  # the fake's are rx only

            async def sampled() -> bool:
                found = (await scrape(a))[1]["overlayd_wireguard_peers"]
                by = {dict(k[1])["handshake"]: v for k, v in found.items()}
                return by == {"recent": 1, "stale": 1, "never": 1}

            await until(sampled, "the traffic sample in the metrics")  # every 5 s
            _, found = await scrape(a)
            traffic = found["overlayd_wireguard_bytes"]
            assert traffic[("overlayd_wireguard_bytes", (("direction", "rx"),))] == 1000
            assert traffic[("overlayd_wireguard_bytes", (("direction", "tx"),))] == 0
            age = found["overlayd_wireguard_handshake_age_max_seconds"]
            assert 400 <= age[("overlayd_wireguard_handshake_age_max_seconds", ())] < 500
            ops = found["overlayd_kernel_operations"]
            key = (("device", "wireguard"), ("entry", "peer"), ("op", "add"))
            assert ops[("overlayd_kernel_operations_total", key)] == 3

    asyncio.run(body())


async def _programmed(dp: FakeDataPlane, count: int) -> bool:
    return len(dp.wg_peers) == count


def test_dns_queries_by_result(tmp_path: Path) -> None:
    async def body() -> None:
        listen = DnsListen(None, ((LOOPBACK, 0),))
        port = free_port()
        async with agent(tmp_path, peers=1, dns_listen=listen, healthz_port=port) as a:
            await until(lambda: _ready(a, "peer2"), "peer2's name")
            _, found = await scrape(a)
            before = _dns(found)
            assert set(before) == {"answered", "nxdomain", "refused", "malformed", "dropped",
                                   "other"}  # fmt: skip
            await _ask(a, "nobody.overlay.internal")
            await _ask(a, "nobody.overlay.internal")
            await _ask(a, "peer2.overlay.internal")
            _, found = await scrape(a)
            after = _dns(found)
            assert after["nxdomain"] == before["nxdomain"] + 2
            assert after["answered"] == before["answered"] + 1
            names = found["overlayd_dns_names"][("overlayd_dns_names", ())]
            assert names >= 2  # self and peer2

    asyncio.run(body())


def _dns(found: dict[str, Samples]) -> dict[str, float]:
    return {dict(k[1])["result"]: v for k, v in found["overlayd_dns_queries"].items()
            if k[0] == "overlayd_dns_queries_total"}  # fmt: skip


async def _ask(a: Agent, name: str) -> dns.message.Message:
    names = a.daemon.names
    assert names is not None
    query = dns.message.make_query(name, "A")
    port = names.server.bound[0][1]
    return await dns.asyncquery.udp(query, str(LOOPBACK), port=port, timeout=5)


async def _ready(a: Agent, node: str) -> bool:
    names = a.daemon.names
    if names is None or not names.server.bound:
        return False
    return bool((await _ask(a, f"{node}.overlay.internal")).answer)


def test_gateway_role_election_and_peers_via_the_gateway(tmp_path: Path) -> None:
    cfg = config(
        Network=NETWORK,
        Backend={"Type": "vxlan+wireguard"},
        Topology={"Mode": "gateway", "Sites": {"b": "mesh"}},
    )
    wg = {"backend_type": "vxlan+wireguard", "wireguard_port": 51820}

    async def body() -> None:
        store = MemStore()
        await store.put_config(cfg)
        await add_peer(store, 9, site="b", public_key=wg_key(9), **wg)  # a host of mesh site b
        one = agent(tmp_path, store=store, dp=FakeDataPlane(underlay_address=IPv4Address(
            "10.0.0.1")), cfg=cfg, paths=FakePaths(), node="one", site="a",
            healthz_port=free_port())  # fmt: skip
        async with one as a:

            async def role(agent: Agent, name: str) -> bool:
                if agent.daemon.status.reconciles == 0:
                    return False  # the status port may not be listening yet
                found = (await scrape(agent))[1]["overlayd_gateway_role"]
                return found[("overlayd_gateway_role", (("role", name),))] == 1

            await until(lambda: role(a, "gateway"), "one is site a's gateway")
            _, found = await scrape(a)
            won = found["overlayd_gateway_elections"]
            assert won[("overlayd_gateway_elections_total", (("result", "won"),))] == 1
            two = agent(tmp_path, store=store, dp=FakeDataPlane(underlay_address=IPv4Address(
                "10.0.0.2")), cfg=cfg, paths=FakePaths(), node="two", site="a",
                healthz_port=free_port())  # fmt: skip
            async with two as b:
                await until(lambda: role(b, "member"), "two is a member")

                async def via_gateway() -> bool:
                    return peers_by_kind((await scrape(b))[1])["gateway"] == 1

                await until(via_gateway, "two counts the remote host as reached via the gateway")
                _, found = await scrape(b)
                won = found["overlayd_gateway_elections"]
                assert won[("overlayd_gateway_elections_total", (("result", "won"),))] == 0

    asyncio.run(body())
