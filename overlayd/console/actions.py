"""The console's management forms: each POST is checked first and answered with a
confirmation page naming what will be written; only the confirmed POST (``confirm=yes``)
writes. The checks and writes are overlayctl's (``store.admin``, ``values.network_init``):
a form that is refused shows the same message as the command would, in the form.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network

from aiohttp import web

from overlayd.console.pages import INIT_FIELDS, Pages
from overlayd.console.view import ConsoleStore
from overlayd.store import admin
from overlayd.values.config import VXLAN_WIREGUARD
from overlayd.values.errors import ConfigError, LeaseFormatError, NotFoundError, OverlaydError
from overlayd.values.lease import parse_subnet_arg
from overlayd.values.network_init import InitRequest, init_config
from overlayd.values.text import quote

MAX_FIELD = 256  # characters of one form field; longer is refused, not cut
FIELDS = frozenset(
    {"subnet", "node", "site", "mode", "backend", "topology", "force"}
    | {f for f, _, _ in INIT_FIELDS}
)


@dataclass(frozen=True)
class Action:
    """A checked request: what it will do, the fields to post again, and the write."""

    what: str
    done: str
    back: str
    fields: tuple[tuple[str, str], ...]
    write: Callable[[ConsoleStore], Awaitable[object]]
    detail: str = ""


Form = Mapping[str, str]
Builder = Callable[[ConsoleStore, Form], Awaitable[Action]]


def _subnet(form: Form) -> IPv4Network:
    text = form.get("subnet", "")
    try:
        return parse_subnet_arg(text.strip())
    except LeaseFormatError:
        raise ConfigError(f"{quote(text)} is not a subnet (e.g. 10.244.3.0/24)") from None


def _int(form: Form, name: str) -> int | None:
    text = form.get(name, "").strip()
    if not text:
        return None
    if not text.isascii() or not text.isdigit():
        raise ConfigError(f"{name.replace('_', ' ')} must be a whole number, got {quote(text)}")
    return int(text)


def _opt(form: Form, name: str) -> str | None:
    return form.get(name, "").strip() or None


def _kept(form: Form, *names: str) -> tuple[tuple[str, str], ...]:
    return tuple((n, form[n]) for n in names if n in form)


async def network_init(_store: ConsoleStore, form: Form) -> Action:
    modes = tuple(m.strip() for m in form.get("site_modes", "").split(",") if m.strip())
    request = InitRequest(
        network=form.get("network", "").strip(),
        backend=_opt(form, "backend") or VXLAN_WIREGUARD,
        subnet_len=_int(form, "subnet_len"),
        subnet_min=_opt(form, "subnet_min"),
        subnet_max=_opt(form, "subnet_max"),
        vni=_int(form, "vni"),
        port=_int(form, "port"),
        mtu=_int(form, "mtu"),
        listen_port=_int(form, "listen_port"),
        keepalive=_int(form, "keepalive"),
        topology=_opt(form, "topology"),
        site_modes=modes,
        dns_zone=_opt(form, "dns_zone"),
    )
    cfg = init_config(request)
    force = form.get("force") == "yes"
    names = [f for f, _, _ in INIT_FIELDS] + ["backend", "topology", "force"]
    return Action(
        f"{'Replace the network config with' if force else 'Create the network'} {cfg.network}?",
        f"wrote the network config {cfg.network}",
        "/network",
        _kept(form, *names),
        lambda store: admin.write_config(store, cfg, force),
        cfg.to_json(redact=True),
    )


async def reserve(store: ConsoleStore, form: Form) -> Action:
    net, node = _subnet(form), form.get("node", "").strip()
    admin.check_reservation(await store.get_config(), net, node)
    return Action(
        f"Reserve {net} for node {quote(node)}?",
        f"reserved {net} for {quote(node)}",
        "/leases",
        (("subnet", str(net)), ("node", node)),
        lambda s: admin.reserve(s, net, node),
    )


def _deletion(
    net: IPv4Network,
    question: str,
    done: str,
    delete: Callable[[ConsoleStore], Awaitable[bool]],
    missing: str,
) -> Action:
    """An action deleting one key of ``net``; ``missing``: the error if it is gone by then."""

    async def write(store: ConsoleStore) -> None:
        if not await delete(store):
            raise NotFoundError(missing)

    return Action(question, done, "/leases", (("subnet", str(net)),), write)


async def unreserve(store: ConsoleStore, form: Form) -> Action:
    net = _subnet(form)
    missing = f"no reservation for {net}"
    if net not in await store.list_reservations():
        raise NotFoundError(missing)
    return _deletion(
        net, f"Remove the reservation of {net}?", f"removed the reservation of {net}",
        lambda s: s.delete_reservation(net), missing,
    )  # fmt: skip


async def revoke(store: ConsoleStore, form: Form) -> Action:
    net = _subnet(form)
    missing = f"no lease for {net}"
    found = next((s for s in (await store.list_leases()).leases if s.subnet == net), None)
    if found is None:
        raise NotFoundError(missing)
    who = quote(found.record.node) if found.record is not None else "(malformed)"
    return _deletion(
        net, f"Remove the lease of {net} (node {who})? A live daemon claims a subnet again.",
        f"revoked {net}", lambda s: s.delete_lease(net), missing,
    )  # fmt: skip


async def site_mode(store: ConsoleStore, form: Form) -> Action:
    site, mode = form.get("site", "").strip(), form.get("mode", "").strip()
    admin.with_site_mode(await store.get_config(), site, mode)  # refused now, not on confirm
    return Action(
        f"Set site {quote(site)} to {mode} mode?",
        f"site {quote(site)} is in {mode} mode",
        "/sites",
        (("site", site), ("mode", mode)),
        lambda s: admin.set_site_mode(s, site, mode),
    )


BUILDERS: dict[str, Builder] = {
    "network-init": network_init,
    "reserve": reserve,
    "unreserve": unreserve,
    "revoke": revoke,
    "site-mode": site_mode,
}


class Actions:
    """Serves ``POST /actions/<verb>``."""

    def __init__(self, store: ConsoleStore, pages: Pages) -> None:
        self._store = store
        self._pages = pages

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/actions/{verb}", self.act)]

    async def act(self, request: web.Request) -> web.Response:
        build = BUILDERS.get(request.match_info["verb"])
        if build is None:
            return self._pages.message(404, "no such action")
        posted = await request.post()
        form = {k: v for k, v in posted.items() if k in FIELDS and isinstance(v, str)}
        if any(len(v) > MAX_FIELD for v in form.values()):
            return self._pages.message(400, f"a field is longer than {MAX_FIELD} characters")
        try:
            action = await build(self._store, form)
            if posted.get("confirm") != "yes":
                return self._pages.html(
                    "confirm.html", "Confirm", what=action.what, detail=action.detail,
                    action=request.path, fields=action.fields, back=action.back,
                )  # fmt: skip
            await action.write(self._store)
        except OverlaydError as exc:
            return await self._refused(request, form, exc)
        return self._pages.html("done.html", "Done", what=action.done, back=action.back)

    async def _refused(self, request: web.Request, form: Form, exc: OverlaydError) -> web.Response:
        """The form again, with why it was refused (the message overlayctl prints)."""
        error = f"error: {exc}" + (f" (hint: {exc.hint})" if exc.hint else "")
        verb = request.match_info["verb"]
        if verb == "network-init":
            return await self._pages.network(request, error, form)
        if verb == "reserve":
            return await self._pages.leases(request, error, form)
        return self._pages.message(404 if isinstance(exc, NotFoundError) else 400, error)
