"""Cloud metadata lookup (overlayd.discovery.metadata) against the providers' APIs served on
127.0.0.1 by tests/lab/tools/metadata_server.py: each provider, ``auto``, none, hostile."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from ipaddress import IPv4Address
from typing import TypeVar

import aiohttp
import pytest
from aiohttp import web

from overlayd.discovery.metadata import (
    DEFAULT_TIMEOUT,
    CloudMetadata,
    MetadataAddress,
    MetadataResult,
    Provider,
    discover,
    parse_mode,
)
from overlayd.values.errors import ConfigError
from tests.lab.tools.metadata_server import (
    ADDRESS_PATHS,
    Behaviour,
    Requests,
    metadata_app,
    parse_answer,
    serving,
)

PUBLIC = "203.0.113.77"
T = TypeVar("T")
Apps = Mapping[Provider, web.Application]


def run(apps: Apps, body: Callable[[dict[Provider, str]], Awaitable[T]]) -> T:
    async def main() -> T:
        async with serving(apps) as bases:
            return await body(bases)

    return asyncio.run(main())


def lookup(apps: Apps, providers: tuple[Provider, ...] = tuple(Provider)) -> MetadataResult:
    return run(apps, lambda bases: discover(providers, bases=bases))


@pytest.mark.parametrize("provider", list(Provider))
def test_each_provider_answers_its_public_address(provider: Provider) -> None:
    requests = Requests([])
    result = lookup({provider: metadata_app(provider, PUBLIC, log=requests)}, (provider,))
    assert result.found == MetadataAddress(provider, IPv4Address(PUBLIC))
    assert result.reasons == ()
    methods = [method for method, _ in requests.seen]
    assert methods == (["PUT", "GET"] if provider in ("aws", "alibaba") else ["GET"])


@pytest.mark.parametrize(
    ("provider", "headers", "status"),
    [
        ("aws", {}, 401),
        ("alibaba", {}, 403),
        ("gcp", {}, 403),
        ("azure", {"Metadata": "true"}, 400),  # no api-version / format=text
        ("azure", {}, 400),
    ],
)
def test_the_fake_services_insist_like_the_real_ones(
    provider: str, headers: dict[str, str], status: int
) -> None:
    async def body(bases: dict[Provider, str]) -> int:
        async with aiohttp.ClientSession() as session:
            url = bases[Provider(provider)] + ADDRESS_PATHS[provider]
            async with session.get(url, headers=headers) as resp:
                return resp.status

    assert run({Provider(provider): metadata_app(provider, PUBLIC)}, body) == status


def test_a_server_with_answers_per_client_answers_each_by_its_address() -> None:
    app = metadata_app("aws", parse_answer(f"127.0.0.2=198.51.100.9,127.0.0.1={PUBLIC}"))
    assert lookup({Provider.AWS: app}).found == MetadataAddress(Provider.AWS, IPv4Address(PUBLIC))
    nobody = metadata_app("aws", parse_answer("127.0.0.2=198.51.100.9"))
    assert lookup({Provider.AWS: nobody}).found is None


def test_auto_finds_the_one_present() -> None:
    result = lookup({Provider.AZURE: metadata_app("azure", PUBLIC)})
    assert result.found == MetadataAddress(Provider.AZURE, IPv4Address(PUBLIC))


def test_auto_takes_the_valid_answer_over_a_hostile_one() -> None:
    apps = {
        Provider.TENCENT: metadata_app("tencent", "10.0.0.5"),
        Provider.GCP: metadata_app("gcp", PUBLIC),
    }
    assert lookup(apps).found == MetadataAddress(Provider.GCP, IPv4Address(PUBLIC))


def test_none_present_is_fast_and_says_why() -> None:
    result = lookup({})
    assert result.found is None
    assert [p for p, _ in result.reasons] == list(Provider)
    assert all(why.startswith("not reachable") for _, why in result.reasons)
    assert result.elapsed < DEFAULT_TIMEOUT
    assert "nothing learned" in result.describe()


def test_services_that_hang_are_given_up_within_the_timeout() -> None:
    hang = Behaviour(delay=30.0)
    apps = {p: metadata_app(p, PUBLIC, hang) for p in Provider}
    result = run(apps, lambda bases: discover(tuple(Provider), bases=bases, timeout=0.2))
    assert result.found is None
    assert {why for _, why in result.reasons} <= {"no answer within 200 ms", "timed out"}
    assert result.elapsed < 0.5  # returned by the lookup, which starts five at once


@pytest.mark.parametrize(
    ("answer", "behaviour", "reason"),
    [
        (PUBLIC, Behaviour(size=8 << 20), "oversize answer"),
        ("not an address\n", Behaviour(), "is not an IPv4 address"),
        ("\xff\xfe junk", Behaviour(), "is not text"),
        ("10.1.2.3", Behaviour(), "not a public address: private"),
        ("169.254.169.254", Behaviour(), "not a public address: link-local"),
        ("224.0.0.1", Behaviour(), "not a public address: multicast"),
        (PUBLIC, Behaviour(status=500), "HTTP 500"),
        ("", Behaviour(), "no public address (empty answer)"),
    ],
    ids=["huge", "garbage", "binary", "private", "link-local", "multicast", "500", "empty"],
)
def test_hostile_answers_are_reasons_with_one_log_line(
    answer: str, behaviour: Behaviour, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="overlayd.discovery")
    apps = {Provider.TENCENT: metadata_app("tencent", answer, behaviour)}
    result = lookup(apps, (Provider.TENCENT,))
    assert result.found is None
    ((provider, why),) = result.reasons
    assert provider is Provider.TENCENT and reason in why
    lines = [r for r in caplog.records if r.name == "overlayd.discovery"]
    assert len(lines) == 1 and reason in lines[0].getMessage()


def test_a_slow_answer_times_out() -> None:
    apps = {Provider.AWS: metadata_app("aws", PUBLIC, Behaviour(delay=5.0))}
    result = lookup(apps, (Provider.AWS,))
    assert result.found is None
    assert result.reasons[0][1] in ("no answer within 250 ms", "timed out")


def test_the_lookup_is_made_once_per_process(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="overlayd.discovery")
    requests = Requests([])

    async def twice(bases: dict[Provider, str]) -> tuple[MetadataResult, MetadataResult]:
        metadata = CloudMetadata(tuple(Provider), bases=bases)
        first, second = await asyncio.gather(metadata.lookup(), metadata.lookup())
        return first, second

    first, second = run({Provider.GCP: metadata_app("gcp", PUBLIC, log=requests)}, twice)
    assert first is second and first.found is not None
    assert len(requests.seen) == 1
    assert [r.getMessage() for r in caplog.records if r.name == "overlayd.discovery"] == [
        first.describe()
    ]


def test_off_asks_nobody() -> None:
    result = asyncio.run(discover(parse_mode("off")))
    assert result == MetadataResult(None, (), 0.0)
    assert result.describe() == "cloud metadata: off"


def test_parse_mode() -> None:
    assert parse_mode("auto") == tuple(Provider)
    assert parse_mode("aws") == (Provider.AWS,)
    with pytest.raises(ConfigError, match="--cloud-metadata 'ec2'"):
        parse_mode("ec2")


def test_a_service_that_is_not_http_is_a_reason(caplog: pytest.LogCaptureFixture) -> None:
    async def not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()
        writer.close()

    async def body() -> MetadataResult:
        server = await asyncio.start_server(not_http, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            bases = {Provider.TENCENT: f"http://127.0.0.1:{port}"}
            return await discover((Provider.TENCENT,), bases=bases)

    caplog.set_level(logging.WARNING, logger="overlayd.discovery")
    result = asyncio.run(body())
    assert result.found is None and "bad HTTP answer" in result.reasons[0][1]
    assert len([r for r in caplog.records if r.name == "overlayd.discovery"]) == 1
