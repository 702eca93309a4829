"""The hosts file of ``--hosts-file`` mode: our marked block kept current (docs/dns.md).

Only the block between ``# BEGIN overlayd <zone>`` and ``# END overlayd <zone>`` is ours
(``overlayd.planning.hosts_block``); the file is rewritten atomically, keeping its mode.
A file that cannot be renamed over (``/etc/hosts`` bind-mounted into a container, where
the rename fails with EBUSY) is written in place instead.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from overlayd.disk.atomic import write_atomically
from overlayd.planning.hosts_block import with_block, without_block
from overlayd.planning.names import Zone


def _read(path: Path) -> tuple[str, int]:
    try:
        return path.read_text(), os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return "", 0o644


def _write(path: Path, text: str, mode: int) -> None:
    try:
        write_atomically(path, text, mode)
    except OSError as exc:
        if exc.errno not in (errno.EBUSY, errno.EXDEV):
            raise
        path.write_text(text)  # a bind mount: replace the content, not the file


def update_hosts_file(path: Path, zone: Zone) -> bool:
    """Put ``zone``'s names into ``path``'s block; True when the file changed. OSError
    when it cannot be read or written."""
    text, mode = _read(path)
    new = with_block(text, zone)
    if new == text:
        return False
    _write(path, new, mode)
    return True


def remove_hosts_block(path: Path, origin: str) -> bool:
    """Take ``origin``'s block out of ``path``; False when it had none."""
    text, mode = _read(path)
    new = without_block(text, origin)
    if new is None:
        return False
    _write(path, new, mode)
    return True
