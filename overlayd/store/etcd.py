"""The store: overlayd's view of etcd, behind a small interface.

Keys under the prefix (default ``/overlayd/network``)::

    <prefix>/config                       network config (flannel JSON)
    <prefix>/subnets/<a.b.c.d>-<len>      subnet leases, bound to an etcd lease (TTL)
    <prefix>/reservations/<a.b.c.d>-<len> permanent reservations {"Node": name}, no TTL
    <prefix>/control/<node>/<verb>        requests to one node's daemon (e.g. rotate-key)

Only this module imports the etcd client; every client or gRPC error leaves it as a
``StoreError`` (see overlayd/values/errors.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, TypeVar

# gRPC's C core writes its own lines to stderr ("Handshake failed …", "Decryption error:
# TSI_DATA_CORRUPTED"), bypassing our logging; this module translates those failures into
# one message of ours instead. gRPC reads GRPC_VERBOSITY once, when it is first imported,
# so the default is set here, where grpc is imported; an operator debugging gRPC can still
# set GRPC_VERBOSITY=debug (and GRPC_TRACE).
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc
from etcd3aio import Etcd3Client, EtcdError, prefix_range_end
from etcd3aio._protobuf import (  # the client has no mod-revision helper, nor a clean watch
    Compare,
    WatchCreateRequest,
    WatchRequest,
    WatchStub,
)
from etcd3aio.base import TRANSIENT_CODES

from overlayd.runtime.retry import Backoff, Retry
from overlayd.store.api import (
    DEFAULT_PREFIX,
    ControlValue,
    EventKind,
    LeaseEvent,
    Snapshot,
    StoredLease,
    StoreKeys,
    WatchBatch,
    decode_reservation,
    decode_stored,
    reservation_value,
)
from overlayd.store.etcd_tls import (
    Endpoint,
    TlsMaterial,
    describe_tls_failure,
    load_tls,
    parse_endpoint,
    parse_endpoints,
)
from overlayd.values.config import NetworkConfig, parse_config
from overlayd.values.errors import (
    ConfigMissingError,
    EtcdTlsError,
    OverlaydError,
    StoreError,
)
from overlayd.values.gateway_state import GatewayClaim, GatewayState, HealthReport
from overlayd.values.lease import LeaseRecord, subnet_key_name

T = TypeVar("T")
RPC_TIMEOUT = 5.0
LIST_PAGE = 500
WATCH_BACKOFF = 0.25  # seconds before a watch reconnects after a transient error; doubles
WATCH_BACKOFF_MAX = 2.0


_gateway_log = logging.getLogger("overlayd.gateway")


@dataclass(frozen=True)
class EtcdSettings:
    """How to reach etcd (the ``--etcd-*`` flags)."""

    endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    prefix: str = DEFAULT_PREFIX
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None


def _resolve(endpoint: Endpoint) -> str:
    """``ip:port`` for the client's channel, which takes IPv4 addresses only."""
    if endpoint.ip is not None:
        return f"{endpoint.ip}:{endpoint.port}"
    try:
        infos = socket.getaddrinfo(endpoint.host, endpoint.port, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        raise StoreError(f"cannot resolve etcd endpoint {endpoint.host!r}: {exc}") from None
    return f"{infos[0][4][0]}:{endpoint.port}"


def _server_name(endpoints: tuple[Endpoint, ...]) -> str:
    """The one name gRPC checks every server certificate against: the first host name, or
    the first address when there are only addresses (see docs/etcd-access.md)."""
    names = sorted(e.host for e in endpoints if e.ip is None)
    return names[0] if names else endpoints[0].host


class EtcdStore:
    """Async etcd v3 access for leases, reservations and the network config."""

    def __init__(self, settings: EtcdSettings) -> None:
        self._settings = settings
        self._prefix = settings.prefix.rstrip("/")
        self._keys = StoreKeys(self._prefix)  # the key layout, shared with MemStore
        self._subnets = self._keys.subnets
        self._reservations = self._keys.reservations
        self._client: Etcd3Client | None = None
        self._tls: TlsMaterial | None = None
        self._server_name: str | None = None

    @property
    def prefix(self) -> str:
        return self._prefix

    def endpoint_addresses(self) -> frozenset[IPv4Address]:
        """The addresses of the etcd endpoints (names resolved): never a guessed peer path."""
        out = set()
        for text in self._settings.endpoints:
            with contextlib.suppress(OverlaydError, ValueError):  # connect() reports bad ones
                out.add(IPv4Address(_resolve(parse_endpoint(text)).rpartition(":")[0]))
        return frozenset(out)

    async def connect(self) -> None:
        """Check the endpoints and TLS files (``ConfigError`` naming what is wrong) and open
        the channel; the first RPC makes the first connection."""
        s = self._settings
        endpoints, use_tls = parse_endpoints(s.endpoints, s.cafile, s.certfile)
        tls = self._tls = load_tls(s.cafile, s.certfile, s.keyfile) if use_tls else None
        self._server_name = _server_name(endpoints) if tls is not None else None
        self._client = Etcd3Client(
            [_resolve(e) for e in endpoints],
            rpc_max_attempts=2,
            watch_max_reconnect_backoff_seconds=2.0,
            tls_server_name=self._server_name,
            ca_cert=tls.ca if tls else None,
            cert_chain=tls.cert if tls else None,
            cert_key=tls.key if tls else None,
        )
        await self._client.connect()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _call(self, what: str, fn: Callable[[Etcd3Client], Awaitable[T]]) -> T:
        if self._client is None:
            raise StoreError("store is not connected")
        try:
            return await fn(self._client)
        except (EtcdError, grpc.RpcError, TimeoutError) as exc:
            raise self._error(what, exc) from None

    def _error(self, what: str, exc: BaseException) -> StoreError:
        """Our error for a failed ``what``: an ``EtcdTlsError`` when TLS was refused."""
        rpc = _rpc_error(exc)
        if rpc is not None:
            said = describe_tls_failure(str(rpc.details()), self._tls, self._server_name)
            if said is not None:
                message, rejected = said
                error = EtcdTlsError if rejected else StoreError
                return error(f"etcd {what} failed: {message}")
        return StoreError(f"etcd {what} failed: {_describe(exc)}")

    # -- config ------------------------------------------------------------------------

    async def get_config_text(self) -> str:
        key = f"{self._prefix}/config"
        resp = await self._call("get config", lambda c: _kv(c).get(key, timeout=RPC_TIMEOUT))
        if not resp.kvs:
            raise ConfigMissingError(f"no network config at {key}")
        value: bytes = resp.kvs[0].value
        return value.decode("utf-8", errors="replace")

    async def get_config(self) -> NetworkConfig:
        return parse_config(await self.get_config_text())

    async def put_config(self, cfg: NetworkConfig) -> None:
        key = f"{self._prefix}/config"
        await self._call(
            "put config", lambda c: _kv(c).put(key, cfg.to_json(), timeout=RPC_TIMEOUT)
        )

    # -- leases ------------------------------------------------------------------------

    def _stored(self, kv: Any) -> StoredLease | None:
        name = kv.key.decode("utf-8", errors="replace")[len(self._subnets) :]
        return decode_stored(
            name, kv.value, int(kv.lease), int(kv.mod_revision), int(kv.create_revision)
        )

    async def list_leases(self) -> Snapshot:
        """Every lease, read in pages at one revision (a consistent snapshot).

        Pages keep the decoded response small: one 5,000-lease response at once raised
        the daemon's RSS for good (scripts/bench).
        """
        end = prefix_range_end(self._subnets.encode())
        start: bytes = self._subnets.encode()
        revision = 0
        leases: list[StoredLease] = []
        while True:

            async def page(c: Etcd3Client, start: bytes = start, revision: int = revision) -> Any:
                return await _kv(c).get(
                    start, end, revision=revision, limit=LIST_PAGE, timeout=RPC_TIMEOUT
                )

            resp = await self._call("list leases", page)
            revision = revision or int(resp.header.revision)
            leases += [s for kv in resp.kvs if (s := self._stored(kv)) is not None]
            if not resp.more or not resp.kvs:
                return Snapshot(revision, tuple(leases))
            start = bytes(resp.kvs[-1].key) + b"\0"

    async def grant(self, ttl: int) -> int:
        resp = await self._call("lease grant", lambda c: _lease(c).grant(ttl, timeout=RPC_TIMEOUT))
        return int(resp.ID)

    async def keepalive(self, lease_id: int) -> int:
        """Renew an etcd lease once; returns the TTL left (<= 0: the lease is gone)."""

        async def once(c: Etcd3Client) -> int:
            stream = _lease(c).keep_alive(lease_id)
            try:
                async for resp in stream:
                    return int(resp.TTL)
                return 0
            finally:
                stream.cancel()

        return await self._call("lease keepalive", once)

    async def ttl_left(self, lease_id: int) -> int:
        resp = await self._call(
            "lease ttl", lambda c: _lease(c).time_to_live(lease_id, timeout=RPC_TIMEOUT)
        )
        return int(resp.TTL)

    async def revoke(self, lease_id: int) -> None:
        await self._call("lease revoke", lambda c: _lease(c).revoke(lease_id, timeout=RPC_TIMEOUT))

    # The lease writes return the store revision of the write (0: the guard failed, nothing
    # written): the keeper tells its own writes from others' by it.

    async def create_lease(self, record: LeaseRecord, lease_id: int) -> int:
        """Atomically write ``record`` if its subnet key does not exist; 0 if it does."""
        key = self._subnets + subnet_key_name(record.subnet)
        return await self._txn_put(key, record.to_json(), lease_id, version=0)

    async def rebind_lease(self, record: LeaseRecord, lease_id: int, mod_revision: int) -> int:
        """Overwrite our own lease key if nobody changed it since ``mod_revision``."""
        key = self._subnets + subnet_key_name(record.subnet)
        return await self._txn_put(key, record.to_json(), lease_id, mod_revision=mod_revision)

    async def replace_lease(self, old: LeaseRecord, new: LeaseRecord, lease_id: int) -> int:
        """Overwrite our lease with ``new`` if it still holds exactly ``old``."""
        key = self._subnets + subnet_key_name(new.subnet)
        return await self._txn_put(key, new.to_json(), lease_id, value_was=old.to_json())

    async def _txn_put(
        self,
        key: str,
        value: str,
        lease_id: int,
        *,
        version: int = -1,
        mod_revision: int = -1,
        value_was: str | None = None,
    ) -> int:
        """Put ``value`` under the compare; the revision written, 0 if the compare failed."""

        async def run(c: Etcd3Client) -> int:
            kv = _kv(c)
            if value_was is not None:
                compare = kv.txn_compare_value(key, value_was)
            elif version >= 0:
                compare = kv.txn_compare_version(key, version)
            else:
                compare = Compare(
                    result=Compare.EQUAL,
                    target=Compare.MOD,
                    key=key.encode(),
                    mod_revision=mod_revision,
                )
            resp = await kv.txn(
                [compare], [kv.txn_op_put(key, value, lease=lease_id)], timeout=RPC_TIMEOUT
            )
            return int(resp.header.revision) if resp.succeeded else 0

        return await self._call("lease transaction", run)

    async def delete_lease(self, subnet: IPv4Network) -> bool:
        key = self._subnets + subnet_key_name(subnet)
        resp = await self._call("delete lease", lambda c: _kv(c).delete(key, timeout=RPC_TIMEOUT))
        return int(resp.deleted) > 0

    async def _watch_range(
        self,
        prefix: str,
        relist: Callable[[], Awaitable[tuple[int, T]]],
        first: tuple[int, T] | None = None,
    ) -> AsyncIterator[tuple[T | None, list[tuple[EventKind, Any]]]]:
        """List ``prefix`` (``relist`` gives revision and listing), then watch it from there;
        list again after a compaction. Yields (listing, []) then (None, events of raw kvs).

        ``first`` (revision, listing) stands in for the first listing, if the caller has one.
        """
        client = self._client
        if client is None:
            raise StoreError("store is not connected")
        end = prefix_range_end(prefix.encode())
        while True:
            revision, listing = first or await relist()
            first = None
            yield listing, []
            stream = _watch_stream(client, prefix.encode(), end, revision + 1)
            try:
                async with contextlib.aclosing(stream):
                    async for resp in stream:
                        if resp.compact_revision > 0 or resp.canceled:
                            break  # events were lost: list again
                        events = [
                            (EventKind.DELETE if ev.type == 1 else EventKind.PUT, ev.kv)
                            for ev in resp.events
                        ]
                        if events:
                            yield None, events
            except (EtcdError, grpc.RpcError) as exc:
                raise self._error("watch", exc) from None

    async def watch_leases(self, first: Snapshot | None = None) -> AsyncIterator[WatchBatch]:
        """A snapshot, then the changes after it; a fresh snapshot after a compaction.

        ``first`` is a snapshot the caller already holds (it saves listing every lease
        again at start-up). Connection losses are retried inside the client;
        ``StoreError`` only when a snapshot cannot be read.
        """

        async def relist() -> tuple[int, Snapshot]:
            snapshot = await self.list_leases()
            return snapshot.revision, snapshot

        held = (first.revision, first) if first is not None else None
        async for listing, raw in self._watch_range(self._subnets, relist, held):
            if listing is not None:
                yield WatchBatch(listing, ())
                continue
            events = tuple(
                LeaseEvent(kind, stored)
                for kind, kv in raw
                if (stored := self._stored(kv)) is not None
            )
            if events:
                yield WatchBatch(None, events)

    # -- gateways ------------------------------------------------------------------------

    def _gateway_key(self, site: str) -> str:
        return self._keys.gateway(site)

    def _report_key(self, site: str, reporter_id: str) -> str:
        return self._keys.report(site, reporter_id)

    async def claim_gateway(self, site: str, claim: GatewayClaim, lease_id: int) -> bool:
        """Become ``site``'s gateway if it has none (atomic); bound to ``lease_id``."""
        key = self._gateway_key(site)
        return await self._txn_put(key, claim.to_json(), lease_id, version=0) > 0

    async def resign_gateway(self, site: str, claim: GatewayClaim) -> bool:
        """Give up ``site``'s gateway key if it is still ``claim``."""
        key = self._gateway_key(site)

        async def run(c: Etcd3Client) -> bool:
            kv = _kv(c)
            resp = await kv.txn(
                [kv.txn_compare_value(key, claim.to_json())],
                [kv.txn_op_delete(key)],
                timeout=RPC_TIMEOUT,
            )
            return bool(resp.succeeded)

        return await self._call("gateway resign", run)

    async def report_gateway(self, site: str, report: HealthReport, lease_id: int) -> None:
        """Publish (or clear, with ``report.healthy``) our view of ``site``'s gateway."""
        key = self._report_key(site, report.reporter_id)
        if report.healthy:
            await self._call("clear report", lambda c: _kv(c).delete(key, timeout=RPC_TIMEOUT))
            return
        value = report.to_json()
        await self._call(
            "put report", lambda c: _kv(c).put(key, value, lease=lease_id, timeout=RPC_TIMEOUT)
        )

    async def list_gateways(self) -> GatewayState:
        prefix = f"{self._prefix}/gw/"
        end = prefix_range_end(prefix.encode())
        resp = await self._call(
            "list gateways", lambda c: _kv(c).get(prefix, end, timeout=RPC_TIMEOUT)
        )
        state = GatewayState()
        for kv in resp.kvs:
            _log_malformed(state.absorb(kv.key.decode("utf-8", "replace")[len(prefix) :], kv.value))
        state.revision = int(resp.header.revision)
        return state

    async def watch_gateways(self) -> AsyncIterator[GatewayState]:
        """The gateways and health reports of every site, again after each change."""

        async def relist() -> tuple[int, GatewayState]:
            state = await self.list_gateways()
            return state.revision, state

        prefix = f"{self._prefix}/gw/"
        current = GatewayState()
        async for listing, raw in self._watch_range(prefix, relist):
            if listing is not None:
                current = listing
            for kind, kv in raw:
                name = kv.key.decode("utf-8", "replace")[len(prefix) :]
                _log_malformed(current.absorb(name, None if kind is EventKind.DELETE else kv.value))
            yield current

    # -- control requests (overlayd/agent/rotation.py) ----------------------------------------

    async def get_control(self, node: str, verb: str) -> ControlValue | None:
        """The request ``verb`` pending for ``node``, None if there is none."""
        return (await self._get_control(self._keys.control(node, verb)))[1]

    async def _get_control(self, key: str) -> tuple[int, ControlValue | None]:
        resp = await self._call("get control", lambda c: _kv(c).get(key, timeout=RPC_TIMEOUT))
        found = _control_value(resp.kvs[0]) if resp.kvs else None
        return int(resp.header.revision), found

    async def put_control(self, node: str, verb: str, value: str) -> None:
        """Write (or renew) the request ``verb`` for ``node``; no etcd lease: it waits."""
        key = self._keys.control(node, verb)
        await self._call("put control", lambda c: _kv(c).put(key, value, timeout=RPC_TIMEOUT))

    async def delete_control(self, node: str, verb: str, mod_revision: int) -> bool:
        """Acknowledge a request: delete it if it is still the one at ``mod_revision``.

        A newer request written meanwhile stays (False), to be served in turn.
        """
        key = self._keys.control(node, verb)

        async def run(c: Etcd3Client) -> bool:
            kv = _kv(c)
            compare = Compare(
                result=Compare.EQUAL,
                target=Compare.MOD,
                key=key.encode(),
                mod_revision=mod_revision,
            )
            resp = await kv.txn([compare], [kv.txn_op_delete(key)], timeout=RPC_TIMEOUT)
            return bool(resp.succeeded)

        return await self._call("delete control", run)

    async def watch_control(self, node: str, verb: str) -> AsyncIterator[ControlValue | None]:
        """The request ``verb`` for ``node`` (None: none) now, then again after each change."""
        key = self._keys.control(node, verb)
        async for listing, raw in self._watch_range(key, lambda: self._get_control(key)):
            if not raw:  # a (re)listing: the value now, None when no request is pending
                yield listing
            for kind, kv in raw:
                if kv.key.decode("utf-8", "replace") != key:
                    continue  # the watched range also holds longer keys: not ours
                yield None if kind is EventKind.DELETE else _control_value(kv)

    # -- reservations ------------------------------------------------------------------

    async def list_reservations(self) -> dict[IPv4Network, str]:
        end = prefix_range_end(self._reservations.encode())
        resp = await self._call(
            "list reservations", lambda c: _kv(c).get(self._reservations, end, timeout=RPC_TIMEOUT)
        )
        skip = len(self._reservations)
        found = (
            decode_reservation(kv.key.decode("utf-8", "replace")[skip:], kv.value)
            for kv in resp.kvs
        )
        return dict(r for r in found if r is not None)

    async def put_reservation(self, subnet: IPv4Network, node: str) -> None:
        key = self._reservations + subnet_key_name(subnet)
        value = reservation_value(node)
        await self._call("put reservation", lambda c: _kv(c).put(key, value, timeout=RPC_TIMEOUT))

    async def delete_reservation(self, subnet: IPv4Network) -> bool:
        key = self._reservations + subnet_key_name(subnet)
        resp = await self._call(
            "delete reservation", lambda c: _kv(c).delete(key, timeout=RPC_TIMEOUT)
        )
        return int(resp.deleted) > 0


def _control_value(kv: Any) -> ControlValue:
    return ControlValue(int(kv.mod_revision), bytes(kv.value).decode("utf-8", "replace"))


class _WatchRequests:
    """The request side of one etcd Watch call: the create request, then nothing until
    ``close()`` ends it.

    etcd3aio's own watch feeds grpc a generator that waits forever; when the call fails by
    itself (an etcd member died) grpc does not cancel the task consuming it, which is later
    destroyed while pending and its generator closed while running ("Task was destroyed but
    it is pending", "aclose(): asynchronous generator is already running" in the log).
    Ending this iterator lets that task finish.
    """

    def __init__(self, request: Any) -> None:
        self._request: Any = request
        self._closed = asyncio.Event()

    def __aiter__(self) -> _WatchRequests:
        return self

    async def __anext__(self) -> Any:
        if self._request is not None:
            request, self._request = self._request, None
            return request
        await self._closed.wait()
        raise StopAsyncIteration

    def close(self) -> None:
        self._closed.set()


async def _watch_stream(
    client: Etcd3Client, key: bytes, end: bytes, revision: int
) -> AsyncGenerator[Any, None]:
    """etcd watch responses for [key, end) from ``revision`` on, across reconnects.

    A transient error (member gone, deadline) reconnects after a backoff, from the revision
    after the last event seen; any other error is raised.
    """
    backoff = Retry(Backoff(first=WATCH_BACKOFF, cap=WATCH_BACKOFF_MAX))
    stub = WatchStub(client._channel)  # the client's own watch leaks tasks; see _WatchRequests
    while True:
        create = WatchCreateRequest(key=key, range_end=end, start_revision=revision)
        requests = _WatchRequests(WatchRequest(create_request=create))
        call = stub.Watch(requests)
        try:
            async for resp in call:
                for ev in resp.events:
                    revision = max(revision, int(ev.kv.mod_revision) + 1)
                backoff.reset()
                yield resp
            return
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in TRANSIENT_CODES:
                raise
        finally:
            requests.close()
            call.cancel()
        await backoff.pause()


def _kv(c: Etcd3Client) -> Any:
    return c.kv


def _lease(c: Etcd3Client) -> Any:
    return c.lease


def _rpc_error(exc: BaseException) -> grpc.aio.AioRpcError | None:
    """The gRPC error behind ``exc`` (the client wraps them in its own), if any."""
    for candidate in (exc, exc.__cause__, exc.__context__):
        if isinstance(candidate, grpc.aio.AioRpcError):
            return candidate
    return None


def _describe(exc: BaseException) -> str:
    rpc = _rpc_error(exc)
    if rpc is not None:
        return f"{rpc.code().name}: {rpc.details()}"
    return str(exc) or type(exc).__name__


def _log_malformed(problem: str | None) -> None:
    """One line for a gateway record that could not be read (it counts as absent)."""
    if problem is not None:
        _gateway_log.error("%s", problem)
