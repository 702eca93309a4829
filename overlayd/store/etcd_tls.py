"""How overlayd talks to etcd: endpoint schemes and their addresses, TLS material checked at
start, and what a failed TLS handshake means in words.

- ``https://host:port``: always TLS; the server is checked against ``--etcd-cafile``, or the
  system CA bundle without it. ``http://host:port``: always plaintext (TLS flags refused).
  Bare ``host:port``: TLS if and only if ``--etcd-cafile`` is given (the historical rule).
  One list may not mix these forms.
- The CA, certificate and key files are read and checked with ``cryptography`` before the
  first connection (PEM, at least one CA certificate, the key matches the certificate): a
  bad file is a ``ConfigError`` naming it, never a retry loop inside gRPC.
- ``describe_tls_failure`` turns gRPC's handshake errors into which side rejected what.

Key material is never logged or quoted: messages name files only.
"""

from __future__ import annotations

import enum
import re
import socket
import ssl
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING

from overlayd.values.errors import TLS_HINT, ConfigError, StoreError
from overlayd.values.text import quote

if TYPE_CHECKING:
    from cryptography import x509

_HOST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


class Scheme(enum.Enum):
    """How an endpoint was written: the scheme decides whether TLS is used."""

    HTTP = "http://"
    HTTPS = "https://"
    BARE = ""


@dataclass(frozen=True, order=True)
class Endpoint:
    """One ``--etcd-endpoints`` item; ``host`` is an IPv4 address or a DNS name."""

    scheme: Scheme
    host: str
    port: int

    @property
    def ip(self) -> IPv4Address | None:
        """The host as an address, or None for a name (resolved when connecting)."""
        try:
            return IPv4Address(self.host)
        except ValueError:
            return None


def parse_endpoint(text: str) -> Endpoint:
    """``[http://|https://]host:port[/]`` -> Endpoint; ``ConfigError`` naming the text."""
    raw = text.strip()
    scheme, rest = Scheme.BARE, raw
    for candidate in (Scheme.HTTP, Scheme.HTTPS):
        if raw.lower().startswith(candidate.value):
            scheme, rest = candidate, raw[len(candidate.value) :]
    rest = rest.rstrip("/")
    host, sep, port = rest.rpartition(":")
    if "://" in rest or not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"etcd endpoint {quote(text)} must be [http://|https://]host:port "
            "(e.g. https://10.0.0.10:2379)",
            hint=TLS_HINT,
        )
    if not _HOST.match(host):
        raise ConfigError(
            f"etcd endpoint {quote(text)}: {quote(host)} is not an IPv4 address or host name",
            hint=TLS_HINT,
        )
    return Endpoint(scheme, host, int(port))


def parse_endpoints(
    texts: Sequence[str], cafile: Path | None, certfile: Path | None
) -> tuple[tuple[Endpoint, ...], bool]:
    """The endpoints and whether TLS is used; ``ConfigError`` on a bad or mixed list."""
    endpoints = tuple(parse_endpoint(t) for t in texts)
    if not endpoints:
        raise ConfigError("at least one etcd endpoint is needed", hint=TLS_HINT)
    schemes = sorted({e.scheme.value for e in endpoints})
    if len(schemes) > 1:
        shown = ", ".join(s or "bare host:port" for s in schemes)
        raise ConfigError(
            f"etcd endpoints mix {shown}: write every endpoint the same way", hint=TLS_HINT
        )
    scheme = endpoints[0].scheme
    if scheme is Scheme.HTTP and (cafile is not None or certfile is not None):
        raise ConfigError(
            "http:// etcd endpoints are plaintext, but TLS files were given: "
            "use https:// endpoints or drop --etcd-cafile/--etcd-certfile/--etcd-keyfile",
            hint=TLS_HINT,
        )
    if scheme is Scheme.BARE and certfile is not None and cafile is None:
        raise ConfigError(
            "client certificates need TLS: give --etcd-cafile or use https:// endpoints",
            hint=TLS_HINT,
        )
    return endpoints, scheme is Scheme.HTTPS or (scheme is Scheme.BARE and cafile is not None)


def resolve(endpoint: Endpoint) -> str:
    """``ip:port`` for the client's channel, which takes IPv4 addresses only."""
    if endpoint.ip is not None:
        return f"{endpoint.ip}:{endpoint.port}"
    try:
        infos = socket.getaddrinfo(endpoint.host, endpoint.port, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        raise StoreError(f"cannot resolve etcd endpoint {endpoint.host!r}: {exc}") from None
    return f"{infos[0][4][0]}:{endpoint.port}"


def server_name(endpoints: tuple[Endpoint, ...]) -> str:
    """The one name gRPC checks every server certificate against: the first host name, or
    the first address when there are only addresses (see docs/etcd-access.md)."""
    names = sorted(e.host for e in endpoints if e.ip is None)
    return names[0] if names else endpoints[0].host


@dataclass(frozen=True)
class TlsMaterial:
    """Checked PEM bytes for the gRPC channel. ``ca_source`` says where the CA came from."""

    ca: bytes
    ca_source: str
    cert: bytes | None = None
    key: bytes | None = None
    certfile: Path | None = None

    def __repr__(self) -> str:  # never show key bytes, even in a traceback or debug line
        return f"TlsMaterial(ca_source={self.ca_source!r}, certfile={self.certfile})"


def system_ca_bundle() -> Path:
    """Where OpenSSL (and so Debian) keeps the trusted CAs; ``SSL_CERT_FILE`` overrides."""
    return Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {flag} {path}: {exc.strerror}", hint=TLS_HINT) from None


def _certificates(path: Path, flag: str) -> tuple[bytes, list[x509.Certificate]]:
    # imported here, not at the top: cryptography.x509 costs ~10 MB of RSS (measured with
    # ru_maxrss), and a daemon without TLS to etcd never needs it
    from cryptography import x509
    from cryptography.utils import CryptographyDeprecationWarning

    data = _read(path, flag)
    try:
        with warnings.catch_warnings():
            # e.g. Debian's bundle holds a CA with a negative serial: valid for gRPC, and a
            # Python warning on our stderr would be noise a person cannot act on
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise ConfigError(f"{flag} {path} holds no PEM certificate", hint=TLS_HINT)
    return data, certs


def _client_pair(certfile: Path, keyfile: Path) -> tuple[bytes, bytes]:
    from cryptography.exceptions import UnsupportedAlgorithm  # lazily: see _certificates
    from cryptography.hazmat.primitives import serialization

    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    cert_pem, certs = _certificates(certfile, "--etcd-certfile")
    key_pem = _read(keyfile, "--etcd-keyfile")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:  # cryptography's word for "this key needs a password"
        raise ConfigError(
            f"--etcd-keyfile {keyfile} is encrypted; overlayd needs an unencrypted key",
            hint=TLS_HINT,
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        # the library's message is not quoted: it could echo bytes of the key
        raise ConfigError(
            f"--etcd-keyfile {keyfile} is not a PEM private key", hint=TLS_HINT
        ) from None
    if key.public_key().public_bytes(der, spki) != certs[0].public_key().public_bytes(der, spki):
        raise ConfigError(
            f"--etcd-keyfile {keyfile} does not match the certificate in "
            f"--etcd-certfile {certfile} (their public keys differ)",
            hint=TLS_HINT,
        )
    return cert_pem, key_pem


def load_tls(cafile: Path | None, certfile: Path | None, keyfile: Path | None) -> TlsMaterial:
    """Read and check the TLS files (the system CA bundle without ``cafile``)."""
    if cafile is not None:
        ca, _ = _certificates(cafile, "--etcd-cafile")
        source = f"--etcd-cafile {cafile}"
    else:
        bundle = system_ca_bundle()
        ca, _ = _certificates(bundle, "the system CA bundle")
        source = f"the system CA bundle {bundle}"
    if certfile is None or keyfile is None:
        if certfile is not None or keyfile is not None:
            raise ConfigError("--etcd-certfile and --etcd-keyfile go together", hint=TLS_HINT)
        return TlsMaterial(ca, source)
    cert, key = _client_pair(certfile, keyfile)
    return TlsMaterial(ca, source, cert, key, certfile)


# -- handshake failures ------------------------------------------------------------------

_SERVER = re.compile(r"ipv4:(\d+\.\d+\.\d+\.\d+:\d+)")
_VERIFY = re.compile(r"CERTIFICATE_VERIFY_FAILED:\s*([^:]*)")
_VERIFY_REASONS = {
    "unable to get local issuer certificate": "unknown CA",
    "self signed certificate": "self-signed",
    "self-signed certificate": "self-signed",
    "certificate has expired": "expired",
    "certificate is not yet valid": "not yet valid",
}


def describe_tls_failure(
    details: str, tls: TlsMaterial | None, server_name: str | None
) -> tuple[str, bool] | None:
    """gRPC's failure ``details`` in words: (message, whether it is a TLS rejection).

    None when the details are not about TLS. Found by running each case against etcd 3.4
    with grpcio 1.85 (tests/security/test_etcd_tls.py): BoringSSL reports our verdict on
    the server as CERTIFICATE_VERIFY_FAILED or a hostname check; with TLS 1.3 the server's
    verdict on us arrives after the handshake, as an alert that gRPC calls TSI_DATA_CORRUPTED.
    """
    found = _SERVER.search(details)
    server = f"etcd server {found.group(1)}" if found else "etcd server"
    if tls is None:
        if "Socket closed" in details:
            return f"{server} closed the connection (if it requires TLS, use https://)", False
        return None
    if verify := _VERIFY.search(details):
        reason = verify.group(1).strip()
        reason = _VERIFY_REASONS.get(reason, reason or "verification failed")
        return f"{server} certificate not trusted by {tls.ca_source} ({reason})", True
    if "Hostname Verification Check failed" in details:
        name = server_name or "its address"
        return f"{server} certificate is not issued for {name}", True
    if "TSI_DATA_CORRUPTED" in details or "ALERT_BAD_CERTIFICATE" in details:
        if tls.cert is None:
            return (
                f"{server} requires a client certificate (give --etcd-certfile/--etcd-keyfile)",
                True,
            )
        return (
            f"{server} rejected our client certificate --etcd-certfile {tls.certfile} "
            "(not signed by a CA it trusts, expired, or not for client use)",
            True,
        )
    if "Handshake read failed" in details or "WRONG_VERSION_NUMBER" in details:
        return f"{server} does not answer TLS (for a plaintext server, use http://)", False
    return None
