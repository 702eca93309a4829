"""``metadata_query MODE [TIMEOUT]``: what this host's cloud metadata service says.

Runs ``overlayd.discovery.metadata.discover`` with the providers of ``--cloud-metadata
MODE`` at their well-known addresses (``TIMEOUT`` seconds, default the daemon's) and
prints one JSON object: ``{"provider": p, "address": a}``, or ``{"provider": null,
"reasons": {provider: why}}`` when nothing was learned.
"""

from __future__ import annotations

import asyncio
import json
import sys

from overlayd.discovery.metadata import DEFAULT_TIMEOUT, discover, parse_mode


async def main(argv: list[str]) -> None:
    timeout = float(argv[1]) if argv[1:] else DEFAULT_TIMEOUT
    result = await discover(parse_mode(argv[0]), timeout=timeout)
    if result.found is not None:
        found = result.found
        print(json.dumps({"provider": str(found.provider), "address": str(found.address)}))
    else:
        print(json.dumps({"provider": None, "reasons": {str(p): r for p, r in result.reasons}}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
