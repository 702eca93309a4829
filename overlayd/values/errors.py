"""Our own exception types; adapters translate library errors into these."""

from __future__ import annotations


class OverlaydError(Exception):
    """Base of every error overlayd raises on purpose.

    ``hint`` is a short suggestion shown to a person by the CLI; ``exit_code`` is what
    a command ends with on this error (2: usage or configuration, 1: runtime);
    ``retryable`` says whether a control loop tries again after it (overlayd/runtime/retry.py):
    true for failures that may pass by themselves (etcd away, netlink busy), false for
    what needs a person (a bad config, certificates etcd refuses).
    """

    hint: str = ""
    exit_code: int = 1
    retryable: bool = False

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class ConfigError(OverlaydError):
    """The network config (or a flag) is invalid."""

    hint = "check the network config with 'overlayctl network show'"
    exit_code = 2


class LeaseFormatError(OverlaydError):
    """A lease record in the store cannot be decoded."""


class StoreError(OverlaydError):
    """The store (etcd) failed or is unreachable."""

    retryable = True
    hint = "check --etcd-endpoints and that etcd is running"


TLS_HINT = "check --etcd-endpoints, --etcd-cafile, --etcd-certfile and --etcd-keyfile"


class EtcdTlsError(StoreError):
    """etcd and overlayd do not agree on TLS: a certificate problem, which needs a person."""

    retryable = False
    hint = TLS_HINT
    exit_code = 2


class ConfigMissingError(StoreError):
    """No network config has been written yet."""

    hint = "write one with 'overlayctl network init --network 10.244.0.0/16'"


class PoolExhaustedError(OverlaydError):
    """No free subnet is left in the network."""

    retryable = True
    hint = "revoke stale leases ('overlayctl leases revoke') or enlarge the network"


class NotFoundError(OverlaydError):
    """A lease, reservation or node asked for does not exist."""


class DaemonUnreachableError(OverlaydError):
    """A running daemon's health port could not be read."""

    retryable = True


class KernelError(OverlaydError):
    """A netlink/nftables/ethtool operation failed."""

    retryable = True


class WireGuardError(OverlaydError):
    """Driving WireGuard (kernel or wireguard-go) failed."""

    retryable = True


class DiscoveryError(OverlaydError):
    """Address discovery (cloud metadata, STUN) learned nothing; the message says why."""

    retryable = True
    hint = "set --public-ip, or --cloud-metadata PROVIDER, or --stun-server HOST:PORT"


class ReportFormatError(OverlaydError):
    """A node's status report in the store cannot be decoded (overlayd/values/report.py)."""


class ToolError(OverlaydError):
    """An external tool a command needs (Graphviz's ``dot``) is missing or failed."""
