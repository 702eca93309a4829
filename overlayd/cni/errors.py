"""CNI error codes, the error type the plugin prints, and the one mapping of exceptions.

Every failure leaves the plugin as a ``CniError`` printed as JSON on stdout; ``to_cni_error``
is the only place where other exceptions get a code.
"""

from __future__ import annotations

import json
from enum import IntEnum

from overlayd.values.errors import ConfigError

# ``typing`` costs milliseconds to import on every plugin run; annotations are strings.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Code(IntEnum):
    """Error codes: 0-99 are the spec's well-known ones, 100+ are ours."""

    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENVIRONMENT = 4
    IO_FAILURE = 5
    DECODING_FAILURE = 6
    INVALID_NETWORK_CONFIG = 7
    TRY_AGAIN_LATER = 11
    NOT_AVAILABLE = 50
    DELEGATE_NOT_FOUND = 100
    DELEGATE_FAILED = 101
    STALE_ATTACHMENT = 102
    GC_INCOMPLETE = 103
    INTERNAL = 999


class CniError(Exception):
    """A failure reported to the runtime as ``{"code", "msg", "details"}``."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict[str, Any]:
        body: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            body["details"] = self.details
        return body


class DelegateError(CniError):
    """The delegate plugin reported an error; its code and message are passed on as-is."""


def to_cni_error(exc: BaseException, command: str) -> CniError:
    """The CNI error to report for ``exc`` raised while running ``command``.

    A missing or invalid subnet file means overlayd has no lease yet: ADD/CHECK should be
    retried later (11), while STATUS says the plugin cannot serve ADDs now (50), which is
    the code the 1.1 spec gives STATUS for that. A delegate that cannot be found is the
    same kind of unavailability for STATUS.
    """
    if command == "STATUS":
        if isinstance(exc, ConfigError):
            return CniError(Code.NOT_AVAILABLE, "overlayd has no subnet on this node", str(exc))
        if isinstance(exc, CniError) and exc.code == Code.DELEGATE_NOT_FOUND:
            return CniError(Code.NOT_AVAILABLE, exc.msg, exc.details)
    if isinstance(exc, CniError):
        return exc
    if isinstance(exc, ConfigError):
        details = f"{exc} ({exc.hint})" if exc.hint else str(exc)
        return CniError(Code.TRY_AGAIN_LATER, "overlayd has no subnet on this node", details)
    if isinstance(exc, json.JSONDecodeError):
        return CniError(Code.DECODING_FAILURE, "cannot decode JSON", str(exc))
    if isinstance(exc, OSError):
        return CniError(Code.IO_FAILURE, "I/O failure", str(exc))
    return CniError(Code.INTERNAL, f"internal error: {type(exc).__name__}", str(exc))
