"""How ``overlayctl`` prints: tables (a header even with no rows), JSON, the ``-o`` flag.

Shared by every command module; knows nothing of the store or of what the rows mean.
"""

from __future__ import annotations

import json
from typing import Any

import click

ERROR_QUOTE = 160  # characters of a decoding error (it quotes values from the store) shown

output_option = click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True
)


def echo_json(value: Any) -> None:
    """Print ``value`` as indented JSON with sorted keys (stable for scripts and diffs)."""
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def echo_table(headers: list[str], rows: list[list[str]]) -> None:
    """Print ``rows`` in columns under ``headers``; no rows: the header alone."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
