"""The store on etcd: ``EtcdStore`` is the ``KeyedStore`` (overlayd/store/keyed.py) over the
etcd client, with its connection (endpoints, TLS) and error translation.

Keys under the prefix (default ``/overlayd/network``)::

    <prefix>/config                       network config (flannel JSON)
    <prefix>/subnets/<a.b.c.d>-<len>      subnet leases, bound to an etcd lease (TTL)
    <prefix>/reservations/<a.b.c.d>-<len> permanent reservations {"Node": name}, no TTL
    <prefix>/gw/site/<site>, gw/health/…  the gateway election (overlayd/store/api.py)
    <prefix>/control/<node>/<verb>        requests to one node's daemon (e.g. rotate-key)
    <prefix>/status/<node>                what the node observes, bound to its own short lease

Only this module imports the etcd client and grpc (the watch's logic is in
overlayd/store/etcd_watch.py, handed the gRPC call); every client or gRPC error leaves it
as a ``StoreError`` (see overlayd/values/errors.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
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

from overlayd.store.api import DEFAULT_PREFIX
from overlayd.store.etcd_tls import (
    TlsMaterial,
    describe_tls_failure,
    load_tls,
    parse_endpoint,
    parse_endpoints,
    resolve,
    server_name,
)
from overlayd.store.etcd_watch import watch_range, watch_stream
from overlayd.store.keyed import KeyedStore
from overlayd.store.keyspace import Guard, KeyValue, RawWatch
from overlayd.values.errors import EtcdTlsError, OverlaydError, StoreError

T = TypeVar("T")
RPC_TIMEOUT = 5.0
LIST_PAGE = 500


@dataclass(frozen=True)
class EtcdSettings:
    """How to reach etcd (the ``--etcd-*`` flags)."""

    endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    prefix: str = DEFAULT_PREFIX
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None


class EtcdStore(KeyedStore):
    """The ``Store`` on etcd v3: ``KeyedStore`` over the etcd client, and its connection."""

    def __init__(self, settings: EtcdSettings) -> None:
        self._etcd = _EtcdKV(settings)
        super().__init__(settings.prefix, self._etcd)

    def endpoint_addresses(self) -> frozenset[IPv4Address]:
        """The addresses of the etcd endpoints (names resolved): never a guessed peer path."""
        return self._etcd.endpoint_addresses()

    async def connect(self) -> None:
        """Check the endpoints and TLS files (``ConfigError`` naming what is wrong) and open
        the channel; the first RPC makes the first connection."""
        await self._etcd.connect()

    async def close(self) -> None:
        await self._etcd.close()


class _EtcdKV:
    """The etcd client as a ``RawKV``: every client or gRPC error leaves as ``StoreError``."""

    def __init__(self, settings: EtcdSettings) -> None:
        self._settings = settings
        self._client: Etcd3Client | None = None
        self._tls: TlsMaterial | None = None
        self._server_name: str | None = None

    def endpoint_addresses(self) -> frozenset[IPv4Address]:
        out = set()
        for text in self._settings.endpoints:
            with contextlib.suppress(OverlaydError, ValueError):  # connect() reports bad ones
                out.add(IPv4Address(resolve(parse_endpoint(text)).rpartition(":")[0]))
        return frozenset(out)

    async def connect(self) -> None:
        s = self._settings
        endpoints, use_tls = parse_endpoints(s.endpoints, s.cafile, s.certfile)
        tls = self._tls = load_tls(s.cafile, s.certfile, s.keyfile) if use_tls else None
        self._server_name = server_name(endpoints) if tls is not None else None
        self._client = Etcd3Client(
            [resolve(e) for e in endpoints],
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

    # -- keys ------------------------------------------------------------------------------

    async def get(self, what: str, key: str) -> tuple[int, KeyValue | None]:
        resp = await self._call(what, lambda c: _kv(c).get(key, timeout=RPC_TIMEOUT))
        return int(resp.header.revision), _key_value(resp.kvs[0]) if resp.kvs else None

    async def range(self, what: str, prefix: str) -> tuple[int, list[KeyValue]]:
        """Read in pages at one revision (a consistent snapshot).

        Pages keep the decoded response small: one 5,000-lease response at once raised
        the daemon's RSS for good (scripts/bench).
        """
        end = prefix_range_end(prefix.encode())
        start: bytes = prefix.encode()
        revision = 0
        found: list[KeyValue] = []
        while True:

            async def page(c: Etcd3Client, start: bytes = start, revision: int = revision) -> Any:
                return await _kv(c).get(
                    start, end, revision=revision, limit=LIST_PAGE, timeout=RPC_TIMEOUT
                )

            resp = await self._call(what, page)
            revision = revision or int(resp.header.revision)
            found += map(_key_value, resp.kvs)
            if not resp.more or not resp.kvs:
                return revision, found
            start = bytes(resp.kvs[-1].key) + b"\0"

    async def put(self, what: str, key: str, value: str, lease: int = 0) -> None:
        await self._call(what, lambda c: _kv(c).put(key, value, lease=lease, timeout=RPC_TIMEOUT))

    async def delete(self, what: str, key: str) -> bool:
        resp = await self._call(what, lambda c: _kv(c).delete(key, timeout=RPC_TIMEOUT))
        return int(resp.deleted) > 0

    async def txn_put(self, what: str, key: str, value: str, lease: int, guard: Guard) -> int:
        return await self._txn(what, key, guard, lambda kv: kv.txn_op_put(key, value, lease=lease))

    async def txn_delete(self, what: str, key: str, guard: Guard) -> bool:
        return await self._txn(what, key, guard, lambda kv: kv.txn_op_delete(key)) > 0

    async def _txn(self, what: str, key: str, guard: Guard, op: Callable[[Any], Any]) -> int:
        """Run ``op`` (built from the client's KV) if ``guard`` holds on ``key``: the revision
        written, 0 if it does not."""

        async def run(c: Etcd3Client) -> int:
            kv = _kv(c)
            resp = await kv.txn([_compare(kv, key, guard)], [op(kv)], timeout=RPC_TIMEOUT)
            return int(resp.header.revision) if resp.succeeded else 0

        return await self._call(what, run)

    async def watch(
        self,
        prefix: str,
        relist: Callable[[], Awaitable[tuple[int, T]]],
        first: tuple[int, T] | None = None,
    ) -> RawWatch[T]:
        """Over reconnects and compactions (overlayd/store/etcd_watch.py); connection losses
        are retried, ``StoreError`` only when a listing cannot be read."""
        client = self._client
        if client is None:
            raise StoreError("store is not connected")
        key = prefix.encode()
        end = prefix_range_end(key)
        stub = WatchStub(client._channel)  # the client's own watch leaks tasks: WatchRequests

        def create(revision: int) -> WatchRequest:
            return WatchRequest(
                create_request=WatchCreateRequest(key=key, range_end=end, start_revision=revision)
            )

        def stream(revision: int) -> AsyncGenerator[Any, None]:
            return watch_stream(create, stub.Watch, _transient, revision)

        raw = watch_range(relist, stream, first)
        try:
            async with contextlib.aclosing(raw):
                async for listing, events in raw:
                    yield listing, [(kind, _key_value(kv)) for kind, kv in events]
        except (EtcdError, grpc.RpcError) as exc:
            raise self._error("watch", exc) from None

    # -- etcd leases -----------------------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        resp = await self._call("lease grant", lambda c: _lease(c).grant(ttl, timeout=RPC_TIMEOUT))
        return int(resp.ID)

    async def keepalive(self, lease_id: int) -> int:
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


def _key_value(kv: Any) -> KeyValue:
    """A key-value of the client (a protobuf message) as ours."""
    return KeyValue(
        bytes(kv.key).decode("utf-8", "replace"),
        bytes(kv.value),
        int(kv.create_revision),
        int(kv.mod_revision),
        int(kv.version),
        int(kv.lease),
    )


def _compare(kv: Any, key: str, guard: Guard) -> Any:
    """``guard`` as the etcd compare of a transaction."""
    if guard.value is not None:
        return kv.txn_compare_value(key, guard.value)
    if guard.mod_revision is None:
        return kv.txn_compare_version(key, 0)
    return Compare(
        result=Compare.EQUAL, target=Compare.MOD, key=key.encode(), mod_revision=guard.mod_revision
    )


def _kv(c: Etcd3Client) -> Any:
    return c.kv


def _lease(c: Etcd3Client) -> Any:
    return c.lease


def _transient(exc: Exception) -> bool:
    """An error a watch reconnects after (a member gone, a deadline)."""
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in TRANSIENT_CODES


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
