"""Test PKI made with ``cryptography``: a CA, server and client certificates, as PEM files.

Used to run etcd with TLS (tests/lab/etcd.py ``EtcdTls``) and to give overlayd good and bad
TLS material. Keys are EC P-256 (fast to generate); nothing here is for production use.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=2)


@dataclass(frozen=True)
class CertFiles:
    """A certificate and its private key on disk (PEM)."""

    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


class TestCA:
    """A self-signed CA in ``directory`` (``<name>-ca.pem`` / ``<name>-ca-key.pem``)."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, directory: Path, name: str = "lab") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"{name} test CA"))
            .issuer_name(_name(f"{name} test CA"))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert_file = directory / f"{name}-ca.pem"
        self.cert_file.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self, common_name: str, *, ips: tuple[IPv4Address, ...] = (), client: bool = False
    ) -> CertFiles:
        """A leaf certificate for ``common_name`` (server, with IP SANs; or a client only).

        Server certificates may also authenticate as clients: etcd 3.4's own gateway
        connects to its gRPC port with the server certificate.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usage = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if not client:
            usage.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        )
        if ips:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ip) for ip in ips]), critical=False
            )
        cert = builder.sign(self._key, hashes.SHA256())
        stem = self.directory / f"{self.name}-{common_name}"
        files = CertFiles(Path(f"{stem}.pem"), Path(f"{stem}-key.pem"))
        files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, files.key)
        return files


def write_key(path: Path) -> Path:
    """A fresh private key that belongs to no certificate (for "key does not match")."""
    _write_key(ec.generate_private_key(ec.SECP256R1()), path)
    return path


@dataclass(frozen=True)
class Pki:
    """The lab CA (etcd's), another CA nobody trusts, and certificates from both."""

    ca: TestCA
    other: TestCA
    server: CertFiles  # for 127.0.0.1 (and ``server_ips``)
    client: CertFiles
    stranger: CertFiles  # a client certificate signed by the other CA
    directory: Path


def make_pki(directory: Path, server_ips: tuple[IPv4Address, ...] = ()) -> Pki:
    """A fresh lab PKI in ``directory``."""
    ca, other = TestCA(directory, "lab"), TestCA(directory, "other")
    return Pki(
        ca,
        other,
        ca.issue("server", ips=(IPv4Address("127.0.0.1"), *server_ips)),
        ca.issue("client", client=True),
        other.issue("client", client=True),
        directory,
    )
