"""TLS to etcd, tried against a real etcd 3.4 with TLS on 127.0.0.1 (no namespace, no root).

Every failure case checks the exact exit code, key words of the message, that no traceback
and no gRPC C-core line reaches stderr, and that it fails in bounded time (no retry loop).
The daemon cases (tests/security/test_etcd_tls_daemon.py) need root.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from overlayd.store.etcd import EtcdSettings, EtcdStore
from overlayd.values.config import parse_config
from overlayd.values.errors import EtcdTlsError
from tests.lab.certs import Pki, make_pki, write_key
from tests.lab.etcd import GRPC_NOISE, EtcdServer, EtcdTls

OVERLAYCTL = str(Path(sys.executable).parent / "overlayctl")
BOUND = 10.0  # seconds: a failure must come well before this, not after retrying forever


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[EtcdServer]:
    """etcd speaking only TLS and requiring client certificates signed by the lab CA."""
    tls = EtcdTls(pki.server, pki.ca.cert_file, pki.ca.cert_file, pki.client)
    workdir = tmp_path_factory.mktemp("etcd-tls")
    with EtcdServer(workdir, tls=tls) as server:
        yield server
    shutil.rmtree(server.data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def https_url(tls_etcd: EtcdServer) -> str:
    return tls_etcd.url


def ctl(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run overlayctl without any inherited etcd/gRPC settings; (result, seconds)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OVERLAYD_", "GRPC_", "SSL_"))}
    start = time.monotonic()
    proc = subprocess.run(
        [OVERLAYCTL, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    return proc, time.monotonic() - start


def good_flags(pki: Pki, url: str) -> list[str]:
    return [
        "--etcd-endpoints", url,
        "--etcd-cafile", str(pki.ca.cert_file),
        "--etcd-certfile", str(pki.client.cert),
        "--etcd-keyfile", str(pki.client.key),
    ]  # fmt: skip


def assert_fails(
    args: list[str], code: int, *words: str, within: float = BOUND
) -> subprocess.CompletedProcess[str]:
    """overlayctl ``args`` exits ``code`` quickly with ``words`` on stderr, and nothing else."""
    proc, took = ctl(*args)
    err = proc.stderr
    assert proc.returncode == code, f"exit {proc.returncode}:\n{err}"
    for word in words:
        assert word in err, f"{word!r} not in:\n{err}"
    assert "Traceback" not in err, err
    assert "Warning" not in err, err  # e.g. cryptography's, about a CA in the system bundle
    assert not GRPC_NOISE.search(err), f"gRPC's own lines on stderr:\n{err}"
    assert took < within, f"took {took:.1f}s:\n{err}"
    return proc


# -- what works ---------------------------------------------------------------------------


def test_good_certificates_work_with_overlayctl(pki: Pki, https_url: str) -> None:
    flags = good_flags(pki, https_url)
    init, _ = ctl(*flags, "--etcd-prefix", "/t/good", "network", "init", "--network", "10.7.0.0/16")
    assert init.returncode == 0, init.stderr
    show, _ = ctl(*flags, "--etcd-prefix", "/t/good", "network", "show")
    assert show.returncode == 0, show.stderr
    assert "10.7.0.0/16" in show.stdout
    assert not GRPC_NOISE.search(init.stderr + show.stderr)


def test_good_certificates_work_with_the_store(pki: Pki, tls_etcd: EtcdServer) -> None:
    async def go() -> str:
        store = EtcdStore(
            EtcdSettings(
                (tls_etcd.url,),
                "/t/store",
                pki.ca.cert_file,
                pki.client.cert,
                pki.client.key,
            )
        )
        await store.connect()
        try:
            await store.put_config(parse_config('{"Network": "10.8.0.0/16"}'))
            return str((await store.get_config()).network)
        finally:
            await store.close()

    assert asyncio.run(go()) == str(IPv4Network("10.8.0.0/16"))


def test_bare_endpoint_with_cafile_still_uses_tls(pki: Pki, tls_etcd: EtcdServer) -> None:
    flags = good_flags(pki, tls_etcd.endpoint)  # no scheme: TLS because --etcd-cafile
    proc, _ = ctl(*flags, "--etcd-prefix", "/t/bare", "leases", "list")
    assert proc.returncode == 0, proc.stderr


# -- the server is not who it should be ---------------------------------------------------


def test_wrong_ca_names_the_cafile(pki: Pki, https_url: str) -> None:
    flags = good_flags(pki, https_url)
    flags[3] = str(pki.other.cert_file)
    assert_fails(
        [*flags, "network", "show"],
        2,
        "certificate not trusted by --etcd-cafile",
        str(pki.other.cert_file),
        "unknown CA",
        https_url.removeprefix("https://"),
    )


def test_https_without_cafile_uses_the_system_cas(pki: Pki, https_url: str) -> None:
    # our self-signed lab CA is in no system bundle: TLS was used, and the server refused
    flags = ["--etcd-endpoints", https_url, "--etcd-certfile", str(pki.client.cert)]
    flags += ["--etcd-keyfile", str(pki.client.key)]
    assert_fails(
        [*flags, "network", "show"], 2, "not trusted by the system CA bundle", "unknown CA"
    )


def test_http_against_a_tls_server_fails_clearly(tls_etcd: EtcdServer) -> None:
    url = f"http://{tls_etcd.endpoint}"
    assert_fails(["--etcd-endpoints", url, "network", "show"], 1, "closed the connection", "TLS")


# -- the server refuses us ----------------------------------------------------------------


def test_no_client_certificate_when_the_server_requires_one(pki: Pki, https_url: str) -> None:
    flags = ["--etcd-endpoints", https_url, "--etcd-cafile", str(pki.ca.cert_file)]
    assert_fails(
        [*flags, "network", "show"],
        2,
        "requires a client certificate",
        "--etcd-certfile/--etcd-keyfile",
    )


def test_client_certificate_of_another_ca_is_rejected(pki: Pki, https_url: str) -> None:
    flags = good_flags(pki, https_url)
    flags[5], flags[7] = str(pki.stranger.cert), str(pki.stranger.key)
    assert_fails(
        [*flags, "network", "show"], 2, "rejected our client certificate", str(pki.stranger.cert)
    )


# -- our own files are wrong: refused before any connection ------------------------------


def test_key_that_does_not_match_the_certificate(pki: Pki, https_url: str) -> None:
    flags = good_flags(pki, https_url)
    flags[7] = str(write_key(pki.directory / "unrelated-key.pem"))
    assert_fails([*flags, "network", "show"], 2, "does not match", flags[7], flags[5])


def test_garbage_key_file(pki: Pki, https_url: str) -> None:
    garbage = pki.directory / "garbage-key.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot a key at all\n-----END PRIVATE KEY-----\n")
    flags = good_flags(pki, https_url)
    flags[7] = str(garbage)
    proc = assert_fails([*flags, "network", "show"], 2, "not a PEM private key", str(garbage))
    assert "not a key at all" not in proc.stderr  # key material is never echoed


def test_missing_file(pki: Pki, https_url: str) -> None:
    flags = good_flags(pki, https_url)
    flags[3] = str(pki.directory / "no-such-ca.pem")
    assert_fails([*flags, "network", "show"], 2, "cannot read --etcd-cafile", flags[3])


def test_cafile_without_a_certificate(pki: Pki, https_url: str) -> None:
    flags = good_flags(pki, https_url)
    flags[3] = str(pki.client.key)  # a key, not a CA certificate
    proc = assert_fails([*flags, "network", "show"], 2, "--etcd-cafile", "holds no PEM certificate")
    assert "PRIVATE KEY" not in proc.stderr


# -- endpoint lists checked when flags are parsed ----------------------------------------


def test_mixed_schemes_are_refused(pki: Pki, https_url: str) -> None:
    endpoints = f"{https_url},http://127.0.0.1:1"
    assert_fails(["--etcd-endpoints", endpoints, "network", "show"], 2, "mix", "http://")


def test_bad_endpoint_text_is_a_usage_error() -> None:
    assert_fails(
        ["--etcd-endpoints", "https://127.0.0.1:2379,ftp://x:y", "network", "show"],
        2,
        "--etcd-endpoints",
        "ftp://x:y",
    )


def test_http_with_tls_files_is_refused(pki: Pki, tls_etcd: EtcdServer) -> None:
    flags = good_flags(pki, f"http://{tls_etcd.endpoint}")
    assert_fails([*flags, "network", "show"], 2, "plaintext", "https://")


def test_store_raises_a_tls_error_with_exit_code_2(pki: Pki, https_url: str) -> None:
    async def go() -> None:
        store = EtcdStore(EtcdSettings((https_url,), "/t/x", pki.other.cert_file))
        await store.connect()
        try:
            await store.get_config()
        finally:
            await store.close()

    with pytest.raises(EtcdTlsError) as caught:
        asyncio.run(go())
    assert caught.value.exit_code == 2
    assert "not trusted by --etcd-cafile" in str(caught.value)
