"""Cloud metadata: this instance's public IPv4 address, as its provider's metadata service
tells it (``--cloud-metadata auto|aws|gcp|azure|alibaba|tencent|off``).

In a cloud whose hosts sit behind 1:1 NAT (an elastic or external IP that is not on any
interface), the metadata service is the one source of the public address that needs no
peer. What each provider is asked (the providers' documentation, as consulted):

* AWS, IMDSv2 (docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-retrieval.html):
  ``PUT http://169.254.169.254/latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds``
  (1-21600), then ``GET /latest/meta-data/public-ipv4`` with ``X-aws-ec2-metadata-token``;
  IMDSv1 (no token) is not used: instances may require v2 and then answer it 401.
* GCP (cloud.google.com/compute/docs/metadata/querying-metadata): ``GET
  http://169.254.169.254/computeMetadata/v1/instance/network-interfaces/0/access-configs/0/external-ip``
  with ``Metadata-Flavor: Google``; the server's answers carry that header too, checked.
* Azure IMDS (learn.microsoft.com/azure/virtual-machines/instance-metadata-service): ``GET
  http://169.254.169.254/metadata/instance/network/interface/0/ipv4/ipAddress/0/publicIpAddress?api-version=2021-02-01&format=text``
  with ``Metadata: true``; an empty answer means no (basic SKU) public address.
* Alibaba Cloud ECS (alibabacloud.com/help/en/ecs/user-guide/view-instance-metadata):
  ``GET http://100.100.100.200/latest/meta-data/eipv4``, in the "security hardening
  mode" that instances may enforce: a token from ``PUT /latest/api/token`` with
  ``X-aliyun-ecs-metadata-token-ttl-seconds``, sent as ``X-aliyun-ecs-metadata-token``.
* Tencent Cloud CVM (intl.cloud.tencent.com/document/product/213/4934): ``GET
  http://metadata.tencentyun.com/latest/meta-data/public-ipv4``; we use the address that
  name has inside a VPC, 169.254.0.23, so that start needs no DNS.

``auto`` asks all five at once and takes the first valid answer: a host has at most one
metadata service, and one that has none must not wait for it -- the whole lookup ends
within ``timeout`` (a quarter second by default; a real service answers in about a
millisecond). An answer must be a public unicast IPv4 address
(``overlayd.values.lease_rules.public_error``); anything else (a refused connection, an
HTTP error, a timeout, an oversize or garbage body) is a reason, never an exception out.
``CloudMetadata`` asks once per process and keeps the result. The base URLs are
parameters, so the tests serve the APIs on loopback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import AddressValueError, IPv4Address
from typing import TYPE_CHECKING

from overlayd.values.errors import ConfigError, DiscoveryError
from overlayd.values.lease_rules import public_error
from overlayd.values.text import quote

if TYPE_CHECKING:
    import aiohttp  # imported when a session opens: a daemon given --public-ip never pays it

log = logging.getLogger("overlayd.discovery")

DEFAULT_TIMEOUT = 0.25
"""Seconds the whole lookup may take, every provider asked in parallel."""
MAX_BODY = 64
"""Longest address answer read: an address is at most 15 characters."""
MAX_TOKEN = 1024
"""Longest token answer read (AWS's are about 60 characters)."""
TOKEN_TTL = 60
"""Seconds a metadata token lives: it is used at once, and only once."""


class Provider(StrEnum):
    AWS = "aws"
    GCP = "gcp"
    AZURE = "azure"
    ALIBABA = "alibaba"
    TENCENT = "tencent"


MODES = ("auto", *Provider, "off")
"""The values of ``--cloud-metadata``."""


@dataclass(frozen=True)
class _Token:
    """A session token to fetch first: PUT ``path`` with ``ttl_header``, send as ``header``."""

    path: str
    ttl_header: str
    header: str


@dataclass(frozen=True)
class _Source:
    base: str
    path: str
    headers: Mapping[str, str]
    token: _Token | None = None
    answer_header: tuple[str, str] | None = None  # a header every genuine answer carries


_SOURCES: Mapping[Provider, _Source] = {
    Provider.AWS: _Source(
        "http://169.254.169.254", "/latest/meta-data/public-ipv4", {},
        _Token("/latest/api/token", "X-aws-ec2-metadata-token-ttl-seconds",
               "X-aws-ec2-metadata-token"),
    ),
    Provider.GCP: _Source(
        "http://169.254.169.254",
        "/computeMetadata/v1/instance/network-interfaces/0/access-configs/0/external-ip",
        {"Metadata-Flavor": "Google"}, answer_header=("Metadata-Flavor", "Google"),
    ),
    Provider.AZURE: _Source(
        "http://169.254.169.254",
        "/metadata/instance/network/interface/0/ipv4/ipAddress/0/publicIpAddress"
        "?api-version=2021-02-01&format=text",
        {"Metadata": "true"},
    ),
    Provider.ALIBABA: _Source(
        "http://100.100.100.200", "/latest/meta-data/eipv4", {},
        _Token("/latest/api/token", "X-aliyun-ecs-metadata-token-ttl-seconds",
               "X-aliyun-ecs-metadata-token"),
    ),
    Provider.TENCENT: _Source("http://169.254.0.23", "/latest/meta-data/public-ipv4", {}),
}  # fmt: skip

DEFAULT_BASES: Mapping[Provider, str] = {p: s.base for p, s in _SOURCES.items()}
"""Each provider's metadata service (scheme, address); tests pass their own."""


def parse_mode(text: str) -> tuple[Provider, ...]:
    """The providers ``--cloud-metadata text`` asks (``auto``: all, ``off``: none)."""
    if text == "auto":
        return tuple(Provider)
    if text == "off":
        return ()
    try:
        return (Provider(text),)
    except ValueError:
        raise ConfigError(
            f"--cloud-metadata {quote(text)} is not one of {', '.join(MODES)}"
        ) from None


@dataclass(frozen=True)
class MetadataAddress:
    """A public address and the provider whose metadata service gave it."""

    provider: Provider
    address: IPv4Address


@dataclass(frozen=True)
class MetadataResult:
    """What one lookup learned: ``found`` (None: nothing), why each provider asked gave
    nothing (sorted by provider), and how long the lookup took (seconds)."""

    found: MetadataAddress | None
    reasons: tuple[tuple[Provider, str], ...]
    elapsed: float

    def describe(self) -> str:
        """One line for the log and ``overlayctl``."""
        took = f"{self.elapsed * 1000:.0f} ms"
        if self.found is not None:
            return f"cloud metadata ({self.found.provider}): {self.found.address} ({took})"
        if not self.reasons:
            return "cloud metadata: off"
        by_reason: dict[str, list[str]] = {}
        for provider, reason in self.reasons:  # providers failing alike share one entry
            by_reason.setdefault(reason, []).append(str(provider))
        why = "; ".join(f"{', '.join(ps)}: {r}" for r, ps in by_reason.items())
        return f"cloud metadata: nothing learned in {took} ({why})"


class InvalidAnswer(DiscoveryError):
    """A metadata service answered, but not with a public IPv4 address (worth a warning:
    something on the metadata address is not what it claims, or is misconfigured)."""


class CloudMetadata:
    """The cloud metadata lookup of one process: asks once, then answers from its cache."""

    def __init__(
        self,
        providers: Sequence[Provider],
        *,
        bases: Mapping[Provider, str] = DEFAULT_BASES,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._providers = tuple(providers)
        self._bases = bases
        self._timeout = timeout
        self._clock = clock
        self._lock = asyncio.Lock()
        self._result: MetadataResult | None = None

    async def lookup(self) -> MetadataResult:
        """The result of the first lookup (made now if none was); never raises."""
        async with self._lock:
            if self._result is None:
                self._result = await discover(
                    self._providers, bases=self._bases, timeout=self._timeout, clock=self._clock
                )
                log.info("%s", self._result.describe())
            return self._result


async def discover(
    providers: Sequence[Provider],
    *,
    bases: Mapping[Provider, str] = DEFAULT_BASES,
    timeout: float = DEFAULT_TIMEOUT,
    clock: Callable[[], float] = time.monotonic,
) -> MetadataResult:
    """Ask ``providers`` in parallel; the first valid answer wins, the rest are cancelled.

    Takes at most ``timeout`` seconds (plus closing the connections); never raises.
    """
    start = clock()
    reasons: dict[Provider, str] = {}
    found: MetadataAddress | None = None
    if not providers:
        return MetadataResult(None, (), 0.0)
    async with _session(timeout) as session:
        tasks = {asyncio.create_task(_ask(session, _SOURCES[p], bases[p])): p for p in providers}
        pending: set[asyncio.Task[IPv4Address]] = set(tasks)
        deadline = asyncio.get_running_loop().time() + timeout
        while pending and found is None:
            remaining = deadline - asyncio.get_running_loop().time()
            done, pending = await asyncio.wait(
                pending, timeout=max(0.0, remaining), return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                break
            for task in sorted(done, key=lambda t: list(Provider).index(tasks[t])):
                settled = _settle(tasks[task], task, reasons)  # retrieves every outcome
                found = found or settled
        for task in pending:
            task.cancel()
            reasons[tasks[task]] = f"no answer within {timeout * 1000:.0f} ms"
        await asyncio.gather(*pending, return_exceptions=True)
    ordered = tuple(sorted(reasons.items(), key=lambda item: list(Provider).index(item[0])))
    return MetadataResult(found, () if found else ordered, clock() - start)


def _settle(
    provider: Provider, task: asyncio.Task[IPv4Address], reasons: dict[Provider, str]
) -> MetadataAddress | None:
    """The address a finished ask found, or None with its reason recorded (and logged)."""
    try:
        return MetadataAddress(provider, task.result())
    except InvalidAnswer as exc:
        log.warning("cloud metadata (%s): %s", provider, exc)
        reasons[provider] = str(exc)
    except DiscoveryError as exc:
        log.debug("cloud metadata (%s): %s", provider, exc)
        reasons[provider] = str(exc)
    return None


def _session(timeout: float) -> aiohttp.ClientSession:
    import aiohttp

    # No proxies from the environment (a metadata service is never behind one), no
    # redirects, no compression: an answer is a few bytes from the host we asked.
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout),
        connector=aiohttp.TCPConnector(force_close=True),
        trust_env=False,
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding", "User-Agent"),
    )


async def _ask(session: aiohttp.ClientSession, source: _Source, base: str) -> IPv4Address:
    """The address ``source`` at ``base`` answers; raises ``DiscoveryError`` with why not."""
    import aiohttp

    try:
        headers = dict(source.headers)
        if source.token is not None:
            ttl = {source.token.ttl_header: str(TOKEN_TTL)}
            headers[source.token.header] = _token(
                await _fetch(session, "PUT", base + source.token.path, ttl, limit=MAX_TOKEN)
            )
        return _address(await _fetch(session, "GET", base + source.path, headers, source))
    except TimeoutError:  # before ClientError: aiohttp's timeouts are both
        raise DiscoveryError("timed out") from None
    except (aiohttp.ClientConnectionError, OSError) as exc:
        # the OS's reason only (refused, no route, …): the URL is the provider's own
        why = getattr(exc, "os_error", None) or exc
        raise DiscoveryError(f"not reachable ({getattr(why, 'strerror', None) or why})") from None
    except aiohttp.ClientError as exc:  # a malformed HTTP answer: headers, chunks, …
        raise InvalidAnswer(f"bad HTTP answer ({type(exc).__name__}: {exc})") from None


async def _fetch(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: Mapping[str, str],
    source: _Source | None = None,
    limit: int = MAX_BODY,
) -> str:
    """The text body of a 200 answer, at most ``limit`` bytes of ASCII, stripped."""
    async with session.request(method, url, headers=headers, allow_redirects=False) as resp:
        if resp.status == 404:
            raise DiscoveryError("no public address (HTTP 404)")
        if resp.status != 200:
            raise DiscoveryError(f"HTTP {resp.status} from {method} {resp.url.path}")
        if source is not None and source.answer_header is not None:
            name, value = source.answer_header
            if resp.headers.get(name) != value:
                raise InvalidAnswer(f"answer without the {name}: {value} header")
        if (resp.content_length or 0) > limit:
            raise InvalidAnswer(f"oversize answer ({resp.content_length} bytes)")
        body = bytearray()
        while len(body) <= limit and (chunk := await resp.content.read(limit + 1)):
            body += chunk
        if len(body) > limit:
            raise InvalidAnswer(f"oversize answer (over {limit} bytes)")
    try:
        return body.decode("ascii").strip()
    except UnicodeDecodeError:
        raise InvalidAnswer(f"answer is not text: {quote(bytes(body))}") from None


def _token(text: str) -> str:
    # It goes into a request header: printable, no spaces (no header injection).
    if not text or not text.isprintable() or any(c.isspace() for c in text):
        raise InvalidAnswer(f"token {quote(text)} is not a token")
    return text


def _address(text: str) -> IPv4Address:
    if not text:
        raise DiscoveryError("no public address (empty answer)")
    try:
        address = IPv4Address(text)
    except AddressValueError:
        raise InvalidAnswer(f"answer {quote(text)} is not an IPv4 address") from None
    if (why := public_error(address)) is not None:
        raise InvalidAnswer(f"answer {address} is not a public address: {why}")
    return address
