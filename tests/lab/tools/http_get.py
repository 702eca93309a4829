"""``http_get URL [TIMEOUT] [--or-nothing]``: print the body of a GET of ``URL``.

With ``--or-nothing`` a failed request prints nothing and exits 0 (a daemon that is not
answering yet); without it the failure is the program's error.
"""

from __future__ import annotations

import sys
import urllib.request


def get(url: str, timeout: float) -> str:
    """The decoded body of ``GET url``."""
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        body: bytes = answer.read()
    return body.decode()


def main(argv: list[str]) -> int:
    or_nothing = "--or-nothing" in argv
    args = [a for a in argv if a != "--or-nothing"]
    url, timeout = args[0], float(args[1]) if len(args) > 1 else 2.0
    try:
        print(get(url, timeout))
    except Exception:
        if not or_nothing:
            raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
