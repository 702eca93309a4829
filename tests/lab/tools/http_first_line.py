"""``http_first_line ADDRESS PORT``: how a ``GET /status`` to ``ADDRESS:PORT`` goes.

Prints ``refused``, ``timeout`` (any other socket error, a silent drop included), ``closed``
(connected, nothing answered) or the first line of the answer.
"""

from __future__ import annotations

import socket
import sys

REQUEST = b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def first_line(address: str, port: int, timeout: float = 3.0) -> str:
    """The outcome of one request (see the module docstring)."""
    with socket.socket() as s:
        s.settimeout(timeout)
        try:
            s.connect((address, port))
            s.sendall(REQUEST)
            return s.recv(200).split(b"\r\n")[0].decode() or "closed"
        except ConnectionRefusedError:
            return "refused"
        except OSError:
            return "timeout"


def main(argv: list[str]) -> int:
    address, port = argv
    print(first_line(address, int(port)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
