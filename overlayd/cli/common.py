"""What both commands share: the etcd flags and error printing (``error: …`` + hint).

Exit codes (README "Using it"): 2 usage or configuration, 1 runtime (etcd unreachable, a
lease not found, …), 70 internal error (a bug: one line, the traceback with ``--debug``).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from overlayd.errors import OverlaydError
from overlayd.store import DEFAULT_PREFIX, EtcdSettings

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
EXIT_INTERNAL = 70  # EX_SOFTWARE (sysexits.h): a bug, not the user's doing
ENDPOINT_SCHEMES = ("", "http", "https")


def etcd_options(fn: F) -> F:
    """The ``--etcd-*`` flags, each also settable as ``OVERLAYD_ETCD_*``."""
    opts = [
        click.option(
            "--etcd-endpoints",
            envvar="OVERLAYD_ETCD_ENDPOINTS",
            default="127.0.0.1:2379",
            show_default=True,
            callback=check_endpoints,
            help="Comma-separated etcd endpoints (host:port).",
        ),
        click.option(
            "--etcd-prefix",
            envvar="OVERLAYD_ETCD_PREFIX",
            default=DEFAULT_PREFIX,
            show_default=True,
            help="Key prefix of the network (/coreos.com/network reads a flannel config).",
        ),
        click.option(
            "--etcd-cafile", envvar="OVERLAYD_ETCD_CAFILE", type=click.Path(path_type=Path)
        ),
        click.option(
            "--etcd-certfile", envvar="OVERLAYD_ETCD_CERTFILE", type=click.Path(path_type=Path)
        ),
        click.option(
            "--etcd-keyfile", envvar="OVERLAYD_ETCD_KEYFILE", type=click.Path(path_type=Path)
        ),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def etcd_settings(
    etcd_endpoints: str,
    etcd_prefix: str,
    etcd_cafile: Path | None,
    etcd_certfile: Path | None,
    etcd_keyfile: Path | None,
) -> EtcdSettings:
    endpoints = tuple(e.strip() for e in etcd_endpoints.split(",") if e.strip())
    if not endpoints:
        raise click.BadParameter("at least one endpoint is needed", param_hint="--etcd-endpoints")
    if (etcd_certfile is None) != (etcd_keyfile is None):
        raise click.BadParameter(
            "--etcd-certfile and --etcd-keyfile go together", param_hint="--etcd-certfile"
        )
    if etcd_certfile is not None and etcd_cafile is None:
        raise click.BadParameter(
            "client certificates need --etcd-cafile", param_hint="--etcd-cafile"
        )
    return EtcdSettings(endpoints, etcd_prefix, etcd_cafile, etcd_certfile, etcd_keyfile)


def check_endpoints(_ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Refuse malformed ``--etcd-endpoints`` when the flags are parsed (a usage error,
    exit 2, naming the endpoint) rather than when the store connects."""
    for item in (e.strip() for e in value.split(",")):
        if not item:
            continue
        scheme, sep, rest = item.rpartition("://")
        host, colon, port = rest.rstrip("/").rpartition(":")
        if (
            (sep and scheme not in ENDPOINT_SCHEMES)
            or not colon
            or not host
            or any(c.isspace() or c in "/@" for c in host)
            or not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535)
        ):
            raise click.BadParameter(
                f"{item!r} is not host:port (e.g. 127.0.0.1:2379)", param=param
            )
    return value


def guarded(body: Callable[[], T], *, debug: bool) -> T:
    """Run ``body``; our errors become ``error: …`` (+ ``hint: …``) and their exit code,
    anything unexpected one ``internal error`` line and exit 70. ``debug``: tracebacks."""
    try:
        return body()
    except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
        raise  # usage errors and --help: click prints them itself
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        _report(_single(exc))


def _single(exc: BaseException) -> BaseException:
    """The one error inside (nested) exception groups of one, e.g. from a TaskGroup."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _report(exc: BaseException) -> NoReturn:
    if isinstance(exc, OverlaydError):
        click.echo(f"error: {exc}", err=True)
        if exc.hint:
            click.echo(f"hint: {exc.hint}", err=True)
        sys.exit(exc.exit_code)
    lines = str(exc).strip().splitlines()
    what = type(exc).__name__ + (f": {lines[0][:200]}" if lines else "")
    click.echo(f"error: internal error: {what}; rerun with --debug", err=True)
    sys.exit(EXIT_INTERNAL)


def _debug(ctx: click.Context) -> bool:
    return bool(ctx.find_root().params.get("debug"))


def friendly_errors(fn: F) -> F:
    """Print ``error: …`` and a hint instead of a traceback (unless ``--debug``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return guarded(lambda: fn(*args, **kwargs), debug=_debug(click.get_current_context()))

    return wrapper  # type: ignore[return-value]


class FriendlyGroup(click.Group):
    """A command group whose every subcommand (and the group's own callback) reports
    errors as ``friendly_errors`` does, so no command can end in a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        return guarded(lambda: super(FriendlyGroup, self).invoke(ctx), debug=_debug(ctx))
