"""``nft_paths library|command``: overlayd.dataplane.nft's runner in this namespace, by one path.

Prints one JSON object: whether a table with a set was written, the terse read-back (no set
elements), a missing table's read-back, and the message of a refused script.
"""

from __future__ import annotations

import json
import sys

from overlayd.dataplane.nft import delete_table, list_table, replace_table, run_nft
from overlayd.values.errors import KernelError

BODY = "  set peers {\n    type ipv4_addr\n    elements = { 192.0.2.7 }\n  }\n"


def main(argv: list[str]) -> int:
    library = argv == ["library"]
    run_nft(replace_table("inet", "ovtest", BODY), library=library)
    run_nft("add element inet ovtest peers { 192.0.2.8 }\n", library=library)
    terse = list_table("inet", "ovtest", library=library)
    try:
        run_nft("add element inet ovtest nosuchset { 192.0.2.9 }\n", library=library)
        refused = ""
    except KernelError as exc:
        refused = str(exc)
    run_nft(delete_table("inet", "ovtest"), library=library)
    out = {
        "terse": terse,
        "after_delete": list_table("inet", "ovtest", library=library),
        "refused": refused,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
