"""The web console's management forms over a MemStore (refused input shown in the form,
confirmation, the write), its token, CSRF, Host and size checks, and ``overlayctl
console``'s refusals."""

from __future__ import annotations

from pathlib import Path

from markupsafe import escape

from overlayd.console.security import COOKIE
from overlayd.store.memory import MemStore
from overlayd.values.errors import ConfigError
from overlayd.values.network_init import InitRequest, init_config
from tests.builders import node_lease
from tests.component.console_client import (
    CSRF,
    TOKEN,
    Client,
    confirmed,
    page,
    post,
    rows,
    run_console,
)
from tests.component.ctl import Ctl

PAGES = ("/", "/sites", "/nodes", "/leases", "/network")
HOSTILE = '<script>alert("x")</script>'


def test_create_the_network_bad_input_shows_the_error_in_the_form() -> None:
    store = MemStore()
    wanted = ""
    try:
        init_config(InitRequest("10.244.0.0/33"))
    except ConfigError as exc:
        wanted = str(exc)

    async def body(client: Client) -> None:
        html = await post(client, "/actions/network-init", 400, network="10.244.0.0/33")
        assert 'id="error"' in html and str(escape(wanted)) in html
        assert 'value="10.244.0.0/33"' in html  # what was typed stays in the form
        html = await post(client, "/actions/network-init", 400, network="10.0.0.0/8", vni="x1")
        assert "vni must be a whole number" in html
        html = await post(
            client, "/actions/network-init", 400, network="10.0.0.0/8", backend="vxlan",
            topology="gateway",
        )  # fmt: skip
        assert "gateway mode needs Backend.Type" in html
        await post(client, "/actions/network-init", 400, network=HOSTILE)
        assert store.get_raw(f"{store.prefix}/config") is None

    run_console(store, body)


def test_create_the_network_asks_first_then_writes() -> None:
    store = MemStore()

    async def body(client: Client) -> None:
        ask = await post(
            client, "/actions/network-init", network="10.250.0.0/16", subnet_len="26",
            site_modes="a=gateway", backend="vxlan+wireguard",
        )  # fmt: skip
        assert "Create the network 10.250.0.0/16?" in ask
        assert store.get_raw(f"{store.prefix}/config") is None  # not before confirming
        await post(
            client, "/actions/network-init", network="10.250.0.0/16", subnet_len="26",
            site_modes="a=gateway", backend="vxlan+wireguard", confirm="yes",
        )  # fmt: skip
        cfg = await store.get_config()
        assert str(cfg.network) == "10.250.0.0/16" and cfg.subnet_len == 26
        assert cfg.topology.mode_of("a") == "gateway"
        again = await post(
            client, "/actions/network-init", 400, network="10.1.0.0/16", confirm="yes"
        )
        assert "a network config already exists" in again
        await confirmed(client, "/actions/network-init", network="10.1.0.0/16", force="yes")
        assert str((await store.get_config()).network) == "10.1.0.0/16"

    run_console(store, body)


def test_reserve_and_unreserve() -> None:
    ctl = Ctl()
    ctl.init()

    async def body(client: Client) -> None:
        html = await post(client, "/actions/reserve", 400, subnet="banana", node="n1")
        assert "&#39;banana&#39; is not a subnet" in html and 'value="banana"' in html
        html = await post(client, "/actions/reserve", 400, subnet="10.9.0.0/24", node="n1")
        assert "is not an allocatable subnet of 10.244.0.0/16" in html
        await post(client, "/actions/reserve", 400, subnet="10.244.7.0/24", node=" ")
        ask = await post(client, "/actions/reserve", subnet="10.244.7.0/24", node="n7")
        assert "Reserve 10.244.7.0/24 for node &#39;n7&#39;?" in ask
        assert await ctl.store.list_reservations() == {}
        await confirmed(client, "/actions/reserve", subnet="10.244.7.0/24", node="n7")
        await confirmed(client, "/actions/reserve", subnet="10.244.8.0-24", node="n8")
        table = rows(await page(client, "/leases"), "reservations")[1:]
        assert [r[:2] for r in table] == [["10.244.7.0/24", "n7"], ["10.244.8.0/24", "n8"]]
        await confirmed(client, "/actions/unreserve", subnet="10.244.7.0/24")
        assert [str(s) for s in await ctl.store.list_reservations()] == ["10.244.8.0/24"]
        await post(client, "/actions/unreserve", 404, subnet="10.244.7.0/24")

    run_console(ctl.store, body)


def test_reserve_without_a_network_says_so() -> None:
    async def body(client: Client) -> None:
        html = await post(client, "/actions/reserve", 400, subnet="10.244.7.0/24", node="n")
        assert "overlayctl network init" in html

    run_console(MemStore(), body)


def test_revoke_a_lease() -> None:
    ctl = Ctl()
    ctl.init()
    ctl.lease(node_lease(1, "192.0.2.1"))
    ctl.lease(node_lease(2, "192.0.2.2"))

    async def body(client: Client) -> None:
        ask = await post(client, "/actions/revoke", subnet="10.244.2.0/24")
        assert "node &#39;node2&#39;" in ask
        await post(client, "/actions/revoke", subnet="10.244.2.0/24", confirm="yes")
        left = (await ctl.store.list_leases()).leases
        assert [str(s.subnet) for s in left] == ["10.244.1.0/24"]
        await post(client, "/actions/revoke", 404, subnet="10.244.2.0/24")
        await post(client, "/actions/revoke", 404, subnet="10.244.2.0/24", confirm="yes")

    run_console(ctl.store, body)


def test_set_a_site_mode() -> None:
    ctl = Ctl()
    ctl.init()
    ctl.lease(node_lease(1, "192.0.2.1", site="a"))

    async def body(client: Client) -> None:
        await confirmed(client, "/actions/site-mode", site="a", mode="gateway")
        assert (await ctl.store.get_config()).topology.mode_of("a") == "gateway"
        assert rows(await page(client, "/sites"), "sites")[1][1] == "gateway"
        html = await post(client, "/actions/site-mode", 400, site="a", mode="star")
        assert "mode must be one of mesh, gateway" in html

    run_console(ctl.store, body)


def test_gateway_mode_is_refused_on_a_vxlan_network() -> None:
    ctl = Ctl()
    ctl.init("--backend", "vxlan")

    async def body(client: Client) -> None:
        html = await post(client, "/actions/site-mode", 400, site="a", mode="gateway")
        assert "gateway mode needs Backend.Type" in html
        assert (await ctl.store.get_config()).topology.mode_of("a") == "mesh"

    run_console(ctl.store, body)


def test_a_post_without_the_csrf_token_is_refused() -> None:
    ctl = Ctl()
    ctl.init()

    async def body(client: Client) -> None:
        for csrf in ("", "wrong", CSRF[:-1]):
            form = {"subnet": "10.244.7.0/24", "node": "n", "confirm": "yes", "csrf": csrf}
            resp = await client.post("/actions/reserve", data=form)
            assert resp.status == 403
        resp = await client.post(
            "/actions/reserve", data={"subnet": "10.244.7.0/24", "node": "n", "confirm": "yes"}
        )
        assert resp.status == 403
        assert await ctl.store.list_reservations() == {}

    run_console(ctl.store, body)


def test_the_token_is_needed_for_every_request() -> None:
    ctl = Ctl()
    ctl.init()

    async def body(client: Client) -> None:
        for path in PAGES:
            html = await page(client, path, 401)
            assert 'id="login"' in html and "10.244.0.0/16" not in html
        await page(client, "/", 401, headers={"Authorization": "Bearer wrong"})
        assert (await client.get("/")).headers["WWW-Authenticate"].startswith("Bearer")
        await page(client, "/", 401, headers={"Authorization": TOKEN})  # no "Bearer "
        await page(client, "/", headers={"Authorization": f"Bearer {TOKEN}"})
        form = {"csrf": CSRF, "subnet": "10.244.7.0/24", "node": "n", "confirm": "yes"}
        assert (await client.post("/actions/reserve", data=form)).status == 401
        assert (await client.post("/login", data={"token": "nope"})).status == 401
        await page(client, "/", 401)
        resp = await client.post("/login", data={"token": TOKEN}, allow_redirects=False)
        assert resp.status == 303 and "HttpOnly" in resp.headers["Set-Cookie"]
        assert "SameSite=Strict" in resp.headers["Set-Cookie"]
        assert "Log in" not in await page(client, "/")  # the cookie now
        assert (await client.post("/actions/reserve", data=form)).status == 200
        assert [str(s) for s in await ctl.store.list_reservations()] == ["10.244.7.0/24"]
        client.session.cookie_jar.clear()
        client.session.cookie_jar.update_cookies({COOKIE: "forged"})
        await page(client, "/", 401)

    run_console(ctl.store, body, token=TOKEN)


def test_another_host_name_is_refused() -> None:
    async def body(client: Client) -> None:
        await page(client, "/", 403, headers={"Host": "rebound.example:8080"})
        await page(client, "/", headers={"Host": "localhost:8080"})

    run_console(MemStore(), body)


def test_a_request_over_the_size_limit_is_refused() -> None:
    ctl = Ctl()
    ctl.init()

    async def body(client: Client) -> None:
        resp = await client.post("/actions/reserve", data={"csrf": CSRF, "node": "n" * 70_000})
        assert resp.status == 413
        html = await post(client, "/actions/reserve", 400, subnet="10.244.7.0/24", node="n" * 300)
        assert "longer than 256 characters" in html
        assert await ctl.store.list_reservations() == {}

    run_console(ctl.store, body)


def test_overlayctl_console_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    ctl = Ctl()
    result = ctl("console", "--listen", "0.0.0.0:0", code=2)
    assert "error: the console on 0.0.0.0 would be open to every network" in result.stderr
    assert "hint: give --token-file" in result.stderr
    result = ctl("console", "--listen", "192.0.2.1:8080", code=2)
    assert "error:" in result.stderr
    assert "is not ADDRESS:PORT" in ctl("console", "--listen", "localhost:80", code=2).stderr
    assert "is not ADDRESS:PORT" in ctl("console", "--listen", "127.0.0.1:99999", code=2).stderr
    short = tmp_path / "short"
    short.write_text("abc\n")
    assert "at least 16" in ctl("console", "--token-file", str(short), code=2).stderr
    missing = tmp_path / "missing"
    assert "cannot read --token-file" in ctl("console", "--token-file", str(missing), code=2).stderr
