"""What both commands share: the etcd flags and error printing (``error: …`` + hint)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from overlayd.errors import ConfigError, OverlaydError
from overlayd.etcd_tls import parse_endpoints
from overlayd.store import DEFAULT_PREFIX, EtcdSettings

F = TypeVar("F", bound=Callable[..., Any])


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


def friendly_errors(fn: F) -> F:
    """Print ``error: …`` and a hint instead of a traceback (unless ``--debug``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(click.get_current_context().find_root().params.get("debug"))
        try:
            return fn(*args, **kwargs)
        except OverlaydError as exc:
            if debug:
                raise
            click.echo(f"error: {exc}", err=True)
            if exc.hint:
                click.echo(f"hint: {exc.hint}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            sys.exit(130)

    return wrapper  # type: ignore[return-value]
