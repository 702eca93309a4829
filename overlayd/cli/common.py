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

from overlayd.store.api import DEFAULT_PREFIX
from overlayd.store.etcd import EtcdSettings
from overlayd.store.etcd_tls import parse_endpoints
from overlayd.values.errors import ConfigError, OverlaydError

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
EXIT_INTERNAL = 70  # EX_SOFTWARE (sysexits.h): a bug, not the user's doing


def etcd_options(fn: F) -> F:
    """The ``--etcd-*`` flags, each also settable as ``OVERLAYD_ETCD_*``."""
    opts = [
        click.option(
            "--etcd-endpoints",
            envvar="OVERLAYD_ETCD_ENDPOINTS",
            default="127.0.0.1:2379",
            show_default=True,
            help="Comma-separated etcd endpoints: https://host:port (TLS), http://host:port "
            "(plaintext) or host:port (TLS only with --etcd-cafile); one form for all.",
        ),
        click.option(
            "--etcd-prefix",
            envvar="OVERLAYD_ETCD_PREFIX",
            default=DEFAULT_PREFIX,
            show_default=True,
            help="Key prefix of the network (/coreos.com/network reads a flannel config).",
        ),
        click.option(
            "--etcd-cafile",
            envvar="OVERLAYD_ETCD_CAFILE",
            type=click.Path(path_type=Path),
            help="PEM CA the etcd server must be signed by (https:// default: system CAs).",
        ),
        click.option(
            "--etcd-certfile",
            envvar="OVERLAYD_ETCD_CERTFILE",
            type=click.Path(path_type=Path),
            help="PEM client certificate (with --etcd-keyfile) for etcd's --client-cert-auth.",
        ),
        click.option(
            "--etcd-keyfile",
            envvar="OVERLAYD_ETCD_KEYFILE",
            type=click.Path(path_type=Path),
            help="PEM private key of --etcd-certfile (unencrypted).",
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
    """The settings from the flags; a bad endpoint or a mixed list is a usage error (2).

    The TLS files themselves are read and checked by ``EtcdStore.connect``.
    """
    endpoints = tuple(e.strip() for e in etcd_endpoints.split(",") if e.strip())
    if (etcd_certfile is None) != (etcd_keyfile is None):
        raise click.BadParameter(
            "--etcd-certfile and --etcd-keyfile go together", param_hint="--etcd-certfile"
        )
    try:
        parse_endpoints(endpoints, etcd_cafile, etcd_certfile)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--etcd-endpoints") from None
    return EtcdSettings(endpoints, etcd_prefix, etcd_cafile, etcd_certfile, etcd_keyfile)


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
