"""Running nftables scripts: the one place overlayd talks to nftables.

Every table of ours is written as one transaction (one script), so it is never half
applied; failures leave as ``KernelError`` with nftables' own message.

Scripts run in-process through libnftables (the library behind the ``nft`` command,
installed with it), called with ctypes: a lease change costs one ingress-set update in
the reconcile pass, and starting an ``nft`` process for it took ~8 ms of the pass
(scripts/bench_ingress.py), the library call well under 1 ms. Where the library cannot be
loaded, the ``nft`` command is run instead.
"""

from __future__ import annotations

import ctypes
import functools
import subprocess
import threading
from typing import Any

from overlayd.values.errors import KernelError

_TERSE = 1 << 11  # NFT_CTX_OUTPUT_TERSE: list tables without set elements
_MISSING = "No such file or directory"


class _Libnftables:
    """One libnftables context of this process; calls are serialised (not thread-safe)."""

    def __init__(self) -> None:
        lib: Any = ctypes.CDLL("libnftables.so.1")
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_int
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_output_set_flags.restype = None
        ctx = lib.nft_ctx_new(0)
        if not ctx or lib.nft_ctx_buffer_output(ctx) or lib.nft_ctx_buffer_error(ctx):
            raise OSError("cannot set up a libnftables context")
        self._lib, self._ctx = lib, ctx
        self._lock = threading.Lock()

    def run(self, script: str, *, terse: bool = False) -> tuple[int, str, str]:
        """(return code, output, error output) of ``script``."""
        with self._lock:
            self._lib.nft_ctx_output_set_flags(self._ctx, _TERSE if terse else 0)
            rc = int(self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode()))
            out = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
            err = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        return rc, out.decode(errors="replace"), err.decode(errors="replace")


@functools.cache
def _library() -> _Libnftables | None:
    """This process's libnftables context, made on first use (a process-wide handle, like
    a netlink socket; cached, never rebuilt); None where the library cannot be loaded."""
    try:
        return _Libnftables()
    except (OSError, AttributeError):
        return None


def _run_command(args: list[str], script: str | None) -> tuple[int, str, str]:
    try:
        proc = subprocess.run(
            ["nft", *args], input=script, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelError(f"cannot run nft: {exc}") from None
    return proc.returncode, proc.stdout, proc.stderr


def run_nft(script: str, *, library: bool = True) -> None:
    """Apply ``script`` atomically; ``KernelError`` if nftables refuses it.
    ``library=False``: through the ``nft`` command even where libnftables loads."""
    lib = _library() if library else None
    rc, _, err = lib.run(script) if lib is not None else _run_command(["-f", "-"], script)
    if rc != 0:
        raise KernelError(f"nft failed: {err.strip()[:500]}")


def list_table(family: str, name: str, *, library: bool = True) -> str | None:
    """Table ``family name`` without its set elements (a cheap read-back of its
    structure, as ``nft --terse list table``), None if there is no such table.
    ``library``: as ``run_nft``'s."""
    lib = _library() if library else None
    if lib is not None:
        rc, out, err = lib.run(f"list table {family} {name}", terse=True)
    else:
        rc, out, err = _run_command(["--terse", "list", "table", family, name], None)
    if rc != 0:
        if _MISSING in err:
            return None
        raise KernelError(f"nft failed: {err.strip()[:500]}")
    return out


def replace_table(family: str, name: str, body: str) -> str:
    """A script that replaces table ``family name`` with ``body`` in one transaction
    (creating it first, so the delete never fails)."""
    return f"{delete_table(family, name)}table {family} {name} {{\n{body}}}\n"


def delete_table(family: str, name: str) -> str:
    """A script that removes table ``family name`` if it exists."""
    return f"table {family} {name} {{}}\ndelete table {family} {name}\n"
