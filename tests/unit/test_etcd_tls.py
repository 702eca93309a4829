"""Endpoint schemes, TLS file checks and handshake messages (overlayd/store/etcd_tls.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from overlayd.store.etcd_tls import (
    Endpoint,
    Scheme,
    TlsMaterial,
    describe_tls_failure,
    load_tls,
    parse_endpoint,
    parse_endpoints,
)
from overlayd.values.errors import ConfigError
from overlayd.values.text import quote
from tests.lab.certs import Pki, make_pki

# what grpcio 1.85 reported against etcd 3.4 (see describe_tls_failure)
UNKNOWN_CA = (
    "connections to all backends failing; last error: UNKNOWN: ipv4:127.0.0.1:2379: Tls "
    "handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:"
    "OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate: OK"
)
REJECTED = (
    "connections to all backends failing; last error: UNAVAILABLE: ipv4:127.0.0.1:2379: "
    "Unwrap failed (TSI_DATA_CORRUPTED)"
)
HOSTNAME = (
    "connections to all backends failing; last error: UNKNOWN: ipv4:10.0.0.2:2379: Custom "
    "verification check failed with error: UNAUTHENTICATED: Hostname Verification Check failed."
)
CLOSED = (
    "connections to all backends failing; last error: UNAVAILABLE: ipv4:127.0.0.1:2379: "
    "Socket closed"
)
REFUSED = (
    "connections to all backends failing; last error: UNAVAILABLE: ipv4:127.0.0.1:2379: "
    "Failed to connect to remote host: connect: Connection refused (111)"
)
CA_ONLY = TlsMaterial(b"ca", "--etcd-cafile /etc/ca.pem")
WITH_CERT = TlsMaterial(b"ca", "--etcd-cafile /etc/ca.pem", b"c", b"k", Path("/etc/me.pem"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("https://10.0.0.1:2379/", Endpoint(Scheme.HTTPS, "10.0.0.1", 2379)),
        ("HTTP://etcd-1.example:2379", Endpoint(Scheme.HTTP, "etcd-1.example", 2379)),
        (" 127.0.0.1:2379 ", Endpoint(Scheme.BARE, "127.0.0.1", 2379)),
    ],
)
def test_endpoints_parse(text: str, endpoint: Endpoint) -> None:
    assert parse_endpoint(text) == endpoint


@pytest.mark.parametrize(
    "text",
    ["10.0.0.1", "https://:2379", "ftp://x:1", "x:0", "x:70000", "[::1]:2379", "a b:1", "h:1/p"],
)
def test_bad_endpoints_are_refused_naming_them(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_endpoint(text)
    assert quote(text) in str(caught.value)
    assert caught.value.exit_code == 2


def test_the_scheme_decides_tls() -> None:
    ca, cert = Path("/ca.pem"), Path("/me.pem")
    assert parse_endpoints(["https://a:1", "https://b:1"], None, None)[1] is True
    assert parse_endpoints(["http://a:1"], None, None)[1] is False
    assert parse_endpoints(["a:1"], None, None)[1] is False
    assert parse_endpoints(["a:1"], ca, cert)[1] is True
    assert parse_endpoints(["https://a:1"], None, cert)[1] is True  # system CAs + client cert


@pytest.mark.parametrize(
    ("texts", "cafile", "certfile", "words"),
    [
        (["https://a:1", "http://b:1"], None, None, "mix http://, https://"),
        (["https://a:1", "b:1"], None, None, "bare host:port"),
        (["http://a:1"], Path("/ca.pem"), None, "plaintext"),
        (["a:1"], None, Path("/me.pem"), "need TLS"),
        ([], None, None, "at least one"),
    ],
)
def test_inconsistent_lists_are_refused(
    texts: list[str], cafile: Path | None, certfile: Path | None, words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_endpoints(texts, cafile, certfile)


def test_handshake_failures_say_who_rejected_what() -> None:
    assert describe_tls_failure(UNKNOWN_CA, CA_ONLY, None) == (
        "etcd server 127.0.0.1:2379 certificate not trusted by --etcd-cafile /etc/ca.pem "
        "(unknown CA)",
        True,
    )
    said, rejected = describe_tls_failure(REJECTED, CA_ONLY, None) or ("", False)
    assert "requires a client certificate" in said and rejected
    said, rejected = describe_tls_failure(REJECTED, WITH_CERT, None) or ("", False)
    assert "rejected our client certificate --etcd-certfile /etc/me.pem" in said and rejected
    said, rejected = describe_tls_failure(HOSTNAME, CA_ONLY, "etcd.example") or ("", False)
    assert "10.0.0.2:2379 certificate is not issued for etcd.example" in said and rejected


def test_non_tls_failures_are_left_alone() -> None:
    assert describe_tls_failure(REFUSED, CA_ONLY, None) is None
    assert describe_tls_failure(REFUSED, None, None) is None
    said, rejected = describe_tls_failure(CLOSED, None, None) or ("", True)
    assert "use https://" in said and not rejected  # maybe TLS-only, maybe not: retried


def test_good_files_load(pki: Pki) -> None:
    tls = load_tls(pki.ca.cert_file, pki.client.cert, pki.client.key)
    assert tls.ca == pki.ca.cert_file.read_bytes()
    assert tls.key == pki.client.key.read_bytes()
    assert b"PRIVATE" not in repr(tls).encode()  # key bytes never in a repr


def test_a_certificate_chain_file_is_accepted(pki: Pki, tmp_path: Path) -> None:
    chain = tmp_path / "chain.pem"
    chain.write_bytes(pki.client.cert.read_bytes() + pki.ca.cert_file.read_bytes())
    assert load_tls(pki.ca.cert_file, chain, pki.client.key).cert == chain.read_bytes()


def test_an_encrypted_key_is_refused(pki: Pki, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pki.client.key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    locked = tmp_path / "locked.pem"
    locked.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ConfigError, match="is encrypted"):
        load_tls(pki.ca.cert_file, pki.client.cert, locked)


def test_certificate_and_key_go_together(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="go together"):
        load_tls(pki.ca.cert_file, pki.client.cert, None)


def test_the_system_bundle_is_checked_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "bundle.pem"
    empty.write_text("")
    monkeypatch.setenv("SSL_CERT_FILE", str(empty))  # OpenSSL's own override of the bundle
    with pytest.raises(ConfigError, match=f"the system CA bundle {empty} holds no PEM"):
        load_tls(None, None, None)
