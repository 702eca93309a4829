"""The hosts-file block of the zone's names (pure): ``--hosts-file`` mode (docs/dns.md).

Without a resolver to route the zone to the responder, a daemon keeps one marked block in
a hosts file: ``# BEGIN overlayd <zone>``, one ``<address> <name>`` line per name of the
zone (sorted), ``# END overlayd <zone>``. ``with_block`` puts the block into a file's
text in place of the previous one (or at its end) and leaves every other line as it was;
``without_block`` takes it out (``overlayctl names cleanup``).
"""

from __future__ import annotations

from overlayd.planning.names import Zone


def begin_marker(origin: str) -> str:
    return f"# BEGIN overlayd {origin}"


def end_marker(origin: str) -> str:
    return f"# END overlayd {origin}"


def render_block(zone: Zone) -> list[str]:
    """The block's lines, markers included."""
    lines = [f"{entry.address}\t{entry.name}" for entry in zone.entries]
    return [begin_marker(zone.origin), *lines, end_marker(zone.origin)]


def _split(text: str, origin: str) -> tuple[list[str], list[str], bool]:
    """The lines before and after our block, and whether there was one."""
    lines = text.splitlines()
    begin, end = begin_marker(origin), end_marker(origin)
    if begin not in lines:
        return lines, [], False
    start = lines.index(begin)
    stop = next((i for i in range(start, len(lines)) if lines[i] == end), len(lines) - 1)
    return lines[:start], lines[stop + 1 :], True


def with_block(text: str, zone: Zone) -> str:
    """``text`` with the zone's block in place of the old one (or appended)."""
    before, after, _ = _split(text, zone.origin)
    return "\n".join([*before, *render_block(zone), *after]) + "\n"


def without_block(text: str, origin: str) -> str | None:
    """``text`` without the block of ``origin`` (None: it had none)."""
    before, after, found = _split(text, origin)
    if not found:
        return None
    lines = [*before, *after]
    return "\n".join(lines) + "\n" if lines else ""
