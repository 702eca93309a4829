"""Node key rotation on request (``overlayctl node rotate-key NODE``).

The request is a key in etcd, ``<prefix>/control/<node>/rotate-key`` (no etcd lease: a
request for a node that is down waits for it), written by ``overlayctl`` from any host
with etcd access; its value says who asked and when (informational only: any write of
the key is a request, because writing it already takes etcd write access, i.e. an
administrator). The node's daemon watches its own key; ``KeyRotation`` keeps the request
and the daemon serves it in its reconcile loop, so a rotation never races a reconcile:

1. ``rotate``: a new X25519 key, persisted atomically (0600) in place of the old one
   (``NodeKey.rotate``); the daemon switches its probers to it at once -- from then on
   probes for the old key are rejected like any stranger's;
2. the same pass sets it on the WireGuard device (``private_key``; peers and their
   allowed IPs stay), then republishes the lease with the new ``PublicKey``;
3. ``acknowledge``: once the lease carries the new key, the request key is deleted if it
   is still the request served (a newer one stays and is served next), and one line is
   logged.

Peers see the lease change: they replace the old key's WireGuard peer by the new one
(same endpoint and allowed IPs; per peer, others untouched) and probe the new key. A new
WireGuard peer with a keepalive sends one at once, which starts the handshake: traffic
resumes within the time the lease change takes to reach the peers (a fraction of a
second). The order -- device first, lease second -- is deliberate: the other way, peers
would start handshakes the device cannot answer yet and WireGuard retries only after 5 s.
And the device initiates with every peer itself as the key is set (``kicks_for`` in
overlayd/values/wireguard.py): that initiation leaves before any peer can know the new key,
so it never crosses a peer's own (crossed initiations are both dropped, and both sides
then wait out the 5 s retry -- seen under load, 2.2 s of a 0.1 s ping lost).

A crash between steps leaves a consistent state: the daemon starts with whatever key is
on disk and publishes it, and the request, not yet acknowledged, is served once more.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from overlayd.disk.node_key import NodeKey, NodeKeyError
from overlayd.runtime.retry import Backoff, Retry
from overlayd.store.api import ControlStore, ControlValue, LeaseStore
from overlayd.values.errors import NotFoundError, OverlaydError, StoreError
from overlayd.values.keys import PublicKey
from overlayd.values.lease import LeaseRecord
from overlayd.values.text import quote

log = logging.getLogger("overlayd.rotation")

VERB = "rotate-key"
"""The control key's last component: ``<prefix>/control/<node>/rotate-key``."""
SHORT = 8
"""Characters of a public key shown in logs and messages (never any private material)."""
POLL_INTERVAL = 0.1  # seconds between ``overlayctl``'s looks at the request while it waits


class RotationPendingError(OverlaydError):
    """The node did not serve a rotation request in time (the request stays pending)."""

    hint = "is the node's daemon running? its log says why; it serves the request when it runs"


def short(key: PublicKey | str | None) -> str:
    """The first ``SHORT`` characters of a base64 public key, with an ellipsis."""
    if key is None:
        return "none"
    text = key.base64 if isinstance(key, PublicKey) else key
    return f"{text[:SHORT]}…"


def encode_request(by: str, at: float) -> str:
    """The value ``overlayctl`` writes: who asked (a host name) and when (UNIX seconds)."""
    return json.dumps({"By": by, "RequestedAt": round(at, 3)}, sort_keys=True)


def describe_request(value: str) -> str:
    """A short, safe description of a request's value for a log line."""
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        by, at = parsed.get("By"), parsed.get("RequestedAt")
        if isinstance(by, str) and isinstance(at, (int, float)) and not isinstance(at, bool):
            try:
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
            except (OverflowError, ValueError, OSError):
                when = quote(at)
            return f"requested by {quote(by)} at {when}"
    return f"request {quote(value)}"


def key_change(old: LeaseRecord | None, new: LeaseRecord | None) -> str | None:
    """A log line when a peer's lease keeps its node but changes its public key."""
    if old is None or new is None or old.node != new.node or old.public_key == new.public_key:
        return None
    return (
        f"peer {quote(new.node)} ({new.subnet}) has a new public key "
        f"{short(new.public_key)} (was {short(old.public_key)})"
    )


class KeyRotation:
    """This node's rotation requests: watched from the store, served by the daemon.

    ``on_request`` is called (on the event loop) when a request arrives; the daemon then
    asks ``due`` in its next pass, calls ``rotate`` and, once its lease carries the new
    key, ``acknowledge``.
    """

    def __init__(self, store: ControlStore, node: str, on_request: Callable[[], None]) -> None:
        self._store = store
        self._node = node
        self._on_request = on_request
        self._pending: ControlValue | None = None  # the request in the store, as last seen
        self._served: int | None = None  # mod revision of the request last served
        self._old: PublicKey | None = None  # the published key the new one replaces
        self._new: PublicKey | None = None  # made for ``_served``, not yet acknowledged

    @property
    def due(self) -> bool:
        """A request is pending that no new key was made for yet."""
        return self._pending is not None and self._pending.mod_revision != self._served

    def seen(self, value: ControlValue | None) -> None:
        """The request key's current value (None: no request); from the watch."""
        self._pending = value
        if self.due:
            self._on_request()

    async def watch(self) -> None:
        """Follow the request key forever; store failures are retried with backoff."""
        backoff = Retry(Backoff(cap=10.0), running=True)
        while True:
            try:
                async for value in self._store.watch_control(self._node, VERB):
                    self.seen(value)
                    backoff.reset()
            except StoreError as exc:
                if not backoff.retries(exc):
                    raise
                log.warning("watch of key rotation requests failed: %s; retrying", exc)
            # ended, with an error or (it should not) without: never spin, pause first
            await backoff.pause()

    def rotate(self, key: NodeKey) -> NodeKey | None:
        """Serve the pending request: a new key persisted in place of ``key``.

        None (one error line) when it cannot be written: that request is not tried
        again -- no line per pass -- but stays in the store until written anew.
        """
        pending = self._pending
        assert pending is not None, "rotate() without a pending request"
        self._served = pending.mod_revision
        try:
            new = key.rotate()
        except NodeKeyError as exc:
            log.error("key rotation failed, keeping the current key: %s", exc)
            return None
        if self._new is None:
            self._old = key.public  # a second request before the ack: keep the first key
        self._new = new.public
        return new

    async def acknowledge(self, published: PublicKey | None) -> None:
        """Once the lease shows the new key (``published``), delete the request served.

        A request written since stays (the delete compares its revision) and is served
        next. ``StoreError`` propagates: the daemon's pass fails and is retried.
        """
        new, pending = self._new, self._pending
        if new is None or published != new:
            return
        served = pending is not None and pending.mod_revision == self._served
        if served:
            assert pending is not None
            await self._store.delete_control(self._node, VERB, pending.mod_revision)
            self._pending = None  # a newer request, if any, comes back through the watch
        if pending is None:
            what = "request withdrawn meanwhile"
        elif served:
            what = describe_request(pending.value)
        else:
            what = "a newer request is pending"
        log.info(
            "node key rotated: public key %s replaces %s; lease republished (%s)",
            short(new),
            short(self._old),
            what,
        )
        self._old = self._new = None


@dataclass(frozen=True)
class RotationResult:
    """What ``overlayctl node rotate-key`` reports: the key before, and after (if waited)."""

    node: str
    old: str
    new: str | None


class _RequestStore(LeaseStore, ControlStore, Protocol):
    """What ``request_rotation`` needs: the leases (the node's key) and its control key."""


async def request_rotation(
    store: _RequestStore, node: str, *, by: str, wait: float | None
) -> RotationResult:
    """Ask ``node``'s daemon to rotate its key; with ``wait`` (seconds), until it has.

    ``NotFoundError`` (exit code 1) for a node without a lease or without a public key
    (nothing is written then); ``RotationPendingError`` when ``wait`` runs out.
    """
    old = await _published_key(store, node)
    await store.put_control(node, VERB, encode_request(by, time.time()))
    if wait is None:
        return RotationResult(node, old, None)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        await asyncio.sleep(POLL_INTERVAL)
        if await store.get_control(node, VERB) is None:  # acknowledged: the lease is updated
            return RotationResult(node, old, await _published_key(store, node))
    raise RotationPendingError(
        f"node {quote(node)} did not rotate its key within {wait:g}s; the request stays pending"
    )


async def _published_key(store: LeaseStore, node: str) -> str:
    leases = sorted(
        (s for s in (await store.list_leases()).leases if s.record and s.record.node == node),
        key=lambda s: s.subnet,
    )
    if not leases:
        raise NotFoundError(f"no lease for node {quote(node)}", hint="see 'overlayctl leases list'")
    for stored in leases:
        if stored.record is not None and stored.record.public_key:
            return stored.record.public_key
    raise NotFoundError(
        f"node {quote(node)} publishes no PublicKey: it has no node key to rotate",
        hint="a flannel node, or an overlayd too old for key rotation",
    )
