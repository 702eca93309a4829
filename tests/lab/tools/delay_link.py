"""``delay_link NEAR FAR DELAY_MS``: relay frames between two TAPs, each after a delay.

The body of ``tests.lab.netns.delay_link``'s helper process (``serve_delay_link``).
"""

from __future__ import annotations

import sys

from tests.lab.netns import serve_delay_link


def main(argv: list[str]) -> int:
    near, far, delay_ms = argv
    serve_delay_link(near, far, float(delay_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
