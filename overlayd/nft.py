"""Running nftables scripts: the one place overlayd calls ``nft``.

Every table of ours is written as one ``nft -f -`` transaction, so it is never half
applied; failures leave as ``KernelError`` with nft's own message.
"""

from __future__ import annotations

import subprocess

from overlayd.errors import KernelError


def run_nft(script: str) -> None:
    """Apply ``script`` atomically with ``nft -f -``; ``KernelError`` if nft refuses it."""
    try:
        proc = subprocess.run(
            ["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelError(f"cannot run nft: {exc}") from None
    if proc.returncode != 0:
        raise KernelError(f"nft failed: {proc.stderr.strip()[:500]}")


def list_table(family: str, name: str) -> str | None:
    """``nft --terse list table``: table ``family name`` without set elements (a cheap
    read-back of its structure), None if there is no such table."""
    try:
        proc = subprocess.run(
            ["nft", "--terse", "list", "table", family, name],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelError(f"cannot run nft: {exc}") from None
    if proc.returncode != 0:
        if "No such file or directory" in proc.stderr:
            return None
        raise KernelError(f"nft failed: {proc.stderr.strip()[:500]}")
    return proc.stdout


def replace_table(family: str, name: str, body: str) -> str:
    """A script that replaces table ``family name`` with ``body`` in one transaction
    (creating it first, so the delete never fails)."""
    return f"{delete_table(family, name)}table {family} {name} {{\n{body}}}\n"


def delete_table(family: str, name: str) -> str:
    """A script that removes table ``family name`` if it exists."""
    return f"table {family} {name} {{}}\ndelete table {family} {name}\n"
