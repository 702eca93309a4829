"""Who may use the console, and from where: the listen rule, the token, CSRF and the Host.

* **Listen.** Loopback by default; any other address only with a token (``listen_rule``).
* **Token.** With one, every request carries it: ``Authorization: Bearer <token>`` or the
  cookie the login form sets (HttpOnly, SameSite=Strict). Compared in constant time.
* **CSRF.** Every form carries the console's CSRF token (random per console run); a POST
  without it is refused, so another site open in the same browser cannot submit our forms.
* **Host.** A request must name the address the console listens on (or ``localhost`` on
  loopback): a DNS-rebinding page whose name now points at 127.0.0.1 is refused, so it
  cannot read a page (and its CSRF token) even from the operator's own browser.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path

from overlayd.agent.status_listen import IPAddress, exposure
from overlayd.values.errors import ConfigError
from overlayd.values.text import quote

COOKIE = "overlayd_console"
MIN_TOKEN = 16  # characters: a token shorter than this is guessable


@dataclass(frozen=True)
class Listen:
    """Where the console listens."""

    address: IPAddress
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"http://{host}:{self.port}/"


@dataclass(frozen=True)
class Access:
    """The secrets a request is checked against; ``token`` None: none needed (loopback)."""

    csrf: str
    token: str | None = None
    hosts: frozenset[str] | None = frozenset({"127.0.0.1", "localhost"})  # None: any

    def token_ok(self, header: str | None, cookie: str | None) -> bool:
        """The request carries the token (always true without one)."""
        if self.token is None:
            return True
        given = [cookie or ""]
        if header is not None and header.startswith("Bearer "):
            given.append(header.removeprefix("Bearer ").strip())
        return any(same(g, self.token) for g in given)

    def csrf_ok(self, given: str | None) -> bool:
        return given is not None and same(given, self.csrf)

    def host_ok(self, host: str | None) -> bool:
        """``host`` (the Host header's name, without the port) is ours."""
        return self.hosts is None or (host is not None and host.lower() in self.hosts)


def same(a: str, b: str) -> bool:
    """Equal, compared in constant time."""
    return hmac.compare_digest(a.encode(), b.encode())


def parse_listen(text: str) -> Listen:
    """``ADDRESS:PORT`` (``[v6]:PORT`` for IPv6) as a ``Listen``; ``ConfigError`` if not."""
    host, sep, port = text.strip().rpartition(":")
    try:
        address = ip_address(host.removeprefix("[").removesuffix("]"))
        number = int(port)
        if not sep or not 0 <= number <= 65535:
            raise ValueError(port)
    except ValueError:
        raise ConfigError(
            f"--listen {quote(text)} is not ADDRESS:PORT",
            hint="e.g. --listen 127.0.0.1:8080 (the default) or --listen [::1]:8080",
        ) from None
    return Listen(address, number)


def allowed_hosts(listen: Listen) -> frozenset[str] | None:
    """The Host names a request may use: the listen address, and ``localhost`` on loopback;
    None (any) on 0.0.0.0 or ::, where the host's names are not known (the token guards)."""
    if listen.address.is_unspecified:
        return None
    names = {str(listen.address)}
    if listen.address.is_loopback:
        names.add("localhost")
    return frozenset(names)


def listen_rule(listen: Listen, token: str | None) -> None:
    """``ConfigError`` if ``listen`` reaches beyond this host and there is no token."""
    who = exposure(listen.address)
    if who is not None and token is None:
        raise ConfigError(
            f"the console on {listen.address} would be open to {who}",
            hint="give --token-file FILE (a secret of at least 16 characters) or listen on "
            "127.0.0.1",
        )


def read_token(path: Path) -> str:
    """The token in ``path`` (surrounding blanks removed); ``ConfigError`` if it cannot be
    read or is too short."""
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read --token-file {quote(str(path))}: {exc}",
            hint="the file holds one line: the console's secret token",
        ) from None
    if len(token) < MIN_TOKEN or not token.isprintable() or " " in token:
        raise ConfigError(
            f"--token-file {quote(str(path))} must hold one token of at least {MIN_TOKEN} "
            "printable characters without blanks",
            hint="e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > FILE",
        )
    return token
