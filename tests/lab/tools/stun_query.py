"""``stun_query SERVER_IP SERVER_PORT [LOCAL_PORT]``: ask a STUN server what it sees.

Runs ``overlayd.discovery.stun.query_from_port`` from a socket bound to ``LOCAL_PORT`` (0 or
absent: any) and prints one JSON object: ``{"port": bound, "address": seen, "mapped_port":
seen port}``, or ``{"error": message}`` (exit status 1).
"""

from __future__ import annotations

import asyncio
import json
import sys

from overlayd.discovery.stun import query_from_port
from overlayd.values.errors import DiscoveryError


async def main(argv: list[str]) -> int:
    server = (argv[0], int(argv[1]))
    try:
        port, mapping = await query_from_port(server, port=int(argv[2]) if argv[2:] else 0)
    except DiscoveryError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 1
    seen = {"port": port, "address": str(mapping.address), "mapped_port": mapping.port}
    print(json.dumps(seen), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
