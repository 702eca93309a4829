"""The daemon's names: the zone it serves, the DNS responder's sockets, container names.

Owns (docs/dns.md): rebuilding the ``Zone`` (``overlayd.planning.names``) from the lease
table the daemon already holds and from the container names in the store, whenever
either changes (coalesced: one rebuild per wake-up, never an etcd read per query); the
warnings about names claimed twice (a warning when this node is involved, else info) and
the one error line per malformed container record; where the responder listens (fixed
addresses at start, the overlay address once it is on the device); the Unix socket the
CNI plugin registers container attachments on, and publishing those in the store bound
to our own etcd lease (again after the lease changes); with ``--hosts-file``, the zone's
block in that file (rewritten when the names change).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from overlayd.agent.lease_fold import LeaseFold
from overlayd.agent.options import DaemonOptions
from overlayd.disk.container_names import FILE as CONTAINER_NAMES
from overlayd.disk.container_names import load_names, save_names
from overlayd.disk.hosts_file import update_hosts_file
from overlayd.dns.server import DnsServer
from overlayd.dns.wire import Responder
from overlayd.planning.names import Conflict, NameEntry, Zone, reverse_origin
from overlayd.planning.zone_builder import ZoneBuilder
from overlayd.store.api import NameStore, NameTable
from overlayd.store.lease_keeper import HeldLease, LeaseKeeper
from overlayd.values.config import NetworkConfig
from overlayd.values.errors import LeaseFormatError, OverlaydError
from overlayd.values.names import DNS_PORT, ContainerName, DnsListen
from overlayd.values.registration import MAX_REGISTRATION, Registration, decode_registration
from overlayd.values.text import quote

log = logging.getLogger("overlayd.dns")

REGISTRATION_TIMEOUT = 2.0  # seconds a CNI plugin may take to send its one line
CONFLICT_LINES = 10  # more new conflicts than this in one rebuild: one summary line


@dataclass(frozen=True)
class NameOptions:
    """What the flags say about names."""

    node: str
    listen: DnsListen
    socket: Path | None  # the CNI registration socket (None: containers get no names)
    hosts_file: Path | None = None  # --hosts-file: keep our block in it (docs/dns.md)
    saved: Path | None = None  # where our registrations survive a restart (the state dir)


class NameService:
    """Serves ``cfg``'s zone from ``fold``'s leases and ``store``'s container names;
    ``held`` gives our lease now (None before the first claim)."""

    def __init__(
        self,
        opts: NameOptions,
        cfg: NetworkConfig,
        store: NameStore,
        fold: LeaseFold,
        held: Callable[[], HeldLease | None],
        route_zone: Callable[[int, IPv4Address, tuple[str, ...]], bool] | None = None,
    ) -> None:
        self._opts, self._cfg, self._store, self._fold, self._held = opts, cfg, store, fold, held
        self._written: Mapping[str, NameEntry] | None = None  # what the hosts file holds
        self._builder = ZoneBuilder(cfg.dns_zone, cfg.network, opts.node)
        self._route_zone = route_zone  # systemd-resolved (overlayd/agent/host.py)
        self._routed: tuple[int, IPv4Address] | None = None
        self.responder = Responder()
        self.server = DnsServer(self.responder)
        self._table = NameTable(0, ())
        self._dirty = asyncio.Event()
        self._conflicts: frozenset[Conflict] = frozenset()
        self._refused: set[tuple[str, str]] = set()
        # our registrations, by container id: published again under each new etcd lease
        saved = load_names(opts.saved) if opts.saved is not None else []
        self._local: dict[str, ContainerName] = {n.container_id: n for n in saved}
        self._published: tuple[int, IPv4Network] | None = None  # (etcd lease, subnet) used
        self._overlay: IPv4Address | None = None
        self._bind_error: str | None = None  # the last one said (once, not every resync)

    @property
    def zone(self) -> Zone | None:
        return self.responder.zone

    def counters(self) -> dict[str, int]:
        """The responder's counters and how many names it serves (``/status``)."""
        zone = self.responder.zone
        return {**self.responder.counters.as_dict(), "names": len(zone.named) if zone else 0}

    def leases_changed(self) -> None:
        """The lease table changed: rebuild the zone soon."""
        self._dirty.set()

    async def run(self) -> None:
        """Listen on the fixed addresses, then keep the zone and the registrations served."""
        for address, port in self._opts.listen.fixed:
            try:
                await self.server.bind(address, port)
            except OSError as exc:
                log.error("cannot listen for DNS on %s:%d: %s", address, port, exc.strerror)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._watch_names())
                tasks.create_task(self._rebuild_loop())
                if self._opts.socket is not None:
                    tasks.create_task(self._serve_registrations(self._opts.socket))
        finally:
            await self.server.close()

    async def follow(self, held: HeldLease, ifindex: int) -> None:
        """Our lease is on the devices (``ifindex``: the overlay device): listen on its
        overlay address (not a previous one), route the zone to it in systemd-resolved, and
        publish our containers' names bound to its etcd lease."""
        port = self._opts.listen.overlay_port
        address = held.record.overlay_ip
        if port is not None and address != self._overlay:
            if self._overlay is not None:
                await self.server.unbind(self._overlay)
            try:
                await self.server.bind(address, port)
                self._overlay, self._bind_error = address, None
            except OSError as exc:  # retried when the devices are configured again
                error = f"cannot listen for DNS on {address}:{port}: {exc.strerror}"
                if error != self._bind_error:
                    log.error("%s", error)
                self._bind_error = error
        if port == DNS_PORT and self._overlay == address:
            await self._route(ifindex, address)
        if self._published != (held.lease_id, held.record.subnet):
            await self._republish(held)

    async def _route(self, ifindex: int, address: IPv4Address) -> None:
        """systemd-resolved asks us for the zone and the reverse zone (once per link)."""
        if self._route_zone is None or self._routed == (ifindex, address):
            return
        domains = (self._cfg.dns_zone, reverse_origin(self._cfg.network))
        try:
            routed = await asyncio.to_thread(self._route_zone, ifindex, address, domains)
        except OverlaydError as exc:  # tried again when the devices are configured again
            log.error("cannot route %s to the DNS responder in systemd-resolved: %s",
                      domains[0], exc)  # fmt: skip
            return
        self._routed = (ifindex, address)
        if routed:
            log.info("systemd-resolved asks %s for %s", address, ", ".join(domains))

    # -- the zone --------------------------------------------------------------------------

    async def _rebuild_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            zone = self._rebuild()
            if self._opts.hosts_file is not None and zone.named != self._written:
                await self._write_hosts(self._opts.hosts_file, zone)
            await asyncio.sleep(0)  # events that arrived meanwhile: one more rebuild

    async def _write_hosts(self, path: Path, zone: Zone) -> None:
        try:
            await asyncio.to_thread(update_hosts_file, path, zone)
        except OSError as exc:  # tried again with the next change
            log.error("cannot update the hosts file %s: %s", path, exc.strerror or exc)
            return
        if self._written is None:
            log.info("hosts file %s: %d names of %s", path, len(zone.entries), zone.origin)
        self._written = zone.named

    def _rebuild(self) -> Zone:
        fold = self._fold
        serial = max((s.mod_revision for s in fold.leases.values()), default=0)
        zone = self._builder.update(
            fold.records, fold.created, self._table.names, max(serial, self._table.revision, 1)
        )
        self.responder.set_zone(zone)
        self._note_conflicts(frozenset(zone.conflicts))
        return zone

    def _note_conflicts(self, conflicts: frozenset[Conflict]) -> None:
        new = sorted(conflicts - self._conflicts)
        self._conflicts = conflicts
        if len(new) > CONFLICT_LINES:
            log.warning("%d DNS names are claimed by more than one node", len(new))
            return
        me = self._opts.node
        for conflict in new:
            level = logging.WARNING if me in (conflict.winner, *conflict.losers) else logging.INFO
            log.log(
                level,
                "DNS name %s is claimed by %s and %s: served by %s",
                conflict.name,
                quote(conflict.winner),
                ", ".join(quote(n) for n in conflict.losers),
                quote(conflict.winner),
            )

    async def _watch_names(self) -> None:
        """The container names of every node (retried on store errors)."""
        while True:
            try:
                async for table in self._store.watch_names():
                    self._absorb(table)
            except OverlaydError as exc:
                if not exc.retryable:
                    raise
                log.warning("container name watch failed: %s; retrying in 1s", exc)
                await asyncio.sleep(1.0)

    def _absorb(self, table: NameTable) -> None:
        self._table = table
        for error in table.errors:
            if error not in self._refused:
                self._refused.add(error)
                log.error("ignoring malformed container name %s", error[1])
        self._refused &= set(table.errors)
        self._dirty.set()

    # -- container registrations (the CNI plugin, overlayd/cni/plugin.py) -------------------

    async def _republish(self, held: HeldLease) -> None:
        try:
            for name in sorted(self._local.values()):
                moved = ContainerName(
                    held.record.subnet, name.container_id, name.name, name.address
                )
                if moved.address in held.record.subnet:
                    await self._store.put_name(moved, held.lease_id)
                    self._local[name.container_id] = moved
            self._published = (held.lease_id, held.record.subnet)
        except OverlaydError as exc:
            log.error("cannot publish container names: %s; retrying with the next pass", exc)

    async def _serve_registrations(self, path: Path) -> None:
        """Serve the CNI plugin's registrations on ``path``; a socket that cannot be made
        is logged and containers get no names (the responder keeps serving the rest)."""
        old = os.umask(0o177)  # the socket is the owner's (root's) only: 0600
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # a socket left by an earlier run
            server = await asyncio.start_unix_server(
                self._registration, str(path), limit=MAX_REGISTRATION + 2
            )
        except OSError as exc:
            log.error("container names: cannot listen on %s: %s", path, exc.strerror or exc)
            return
        finally:
            os.umask(old)
        log.info("container names: CNI registrations on %s", path)
        async with server:
            await server.serve_forever()

    async def _registration(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            async with asyncio.timeout(REGISTRATION_TIMEOUT):
                line = await reader.readline()
            reply = await self.register(decode_registration(line))
        except LeaseFormatError as exc:
            reply = f"error: {exc}"
        except (TimeoutError, ValueError, ConnectionError):
            reply = "error: no registration line"
        with contextlib.suppress(ConnectionError):
            writer.write(reply.encode() + b"\n")
            await writer.drain()
        writer.close()

    async def _save(self) -> None:
        if self._opts.saved is None:
            return
        try:
            await asyncio.to_thread(save_names, self._opts.saved, list(self._local.values()))
        except OSError as exc:  # the names stay published; only a restart would lose them
            log.error("cannot keep container names in %s: %s", self._opts.saved, exc)

    async def register(self, reg: Registration) -> str:
        """Publish (or, without an address, withdraw) a container's name: ``ok`` or
        ``error: …`` for the plugin."""
        held = self._held()
        if held is None:
            return "error: this node holds no lease yet"
        subnet = held.record.subnet
        try:
            if reg.address is None:
                self._local.pop(reg.container_id, None)
                await self._save()
                await self._store.delete_name(subnet, reg.container_id)
                log.info("container %s left", quote(reg.container_id[:12]))
                return "ok"
            if reg.address not in subnet or reg.address == held.record.overlay_ip:
                return f"error: {reg.address} is not a container address in {subnet}"
            name = ContainerName(subnet, reg.container_id, reg.name, reg.address)
            await self._store.put_name(name, held.lease_id)
        except OverlaydError as exc:
            return f"error: {exc}"
        self._local[reg.container_id] = name
        await self._save()
        log.info("container %s is %s.%s (%s)", quote(reg.container_id[:12]), reg.name,
                 self._opts.node, reg.address)  # fmt: skip
        return "ok"


def name_service(
    opts: DaemonOptions,
    cfg: NetworkConfig,
    store: NameStore,
    fold: LeaseFold,
    keeper: LeaseKeeper,
    route_zone: Callable[[int, IPv4Address, tuple[str, ...]], bool],
) -> NameService | None:
    """The daemon's ``NameService`` as its flags ask for it (None: names are off)."""
    if not (opts.dns_listen.enabled or opts.names_socket or opts.hosts_file):
        return None
    names = NameOptions(
        opts.node_name, opts.dns_listen, opts.names_socket, opts.hosts_file,
        opts.state_dir / CONTAINER_NAMES,
    )  # fmt: skip
    return NameService(names, cfg, store, fold, lambda: keeper.held, route_zone)
