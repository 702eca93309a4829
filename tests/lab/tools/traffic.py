"""TCP and UDP test traffic: ``traffic COMMAND ARGS...``.

``tcp-recv PORT TIMEOUT``
    Accept one connection on all addresses; print ``ready`` once listening, then
    ``<bytes> <seconds> <peer address>`` when the sender has shut down its side.
``tcp-send ADDRESS PORT NBYTES TIMEOUT``
    Connect and send ``NBYTES`` zero bytes, then shut down the sending side.
``udp-recv PORT TIMEOUT``
    Print ``ready``, then the source ``<address> <port>`` of the first datagram, or ``none``.
``udp-send ADDRESS PORT SECONDS [SOURCE_PORT]``
    Send a datagram every 50 ms for ``SECONDS`` (from ``SOURCE_PORT`` if given).
``udp-print ADDRESS PORT``
    Print ``ready``, then every datagram received on ``ADDRESS:PORT`` (one a line), until
    terminated.
"""

from __future__ import annotations

import socket
import sys
import time

CHUNK = 1 << 20
UDP_INTERVAL = 0.05


def tcp_recv(port: int, timeout: float) -> None:
    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", port))
        srv.listen(1)
        srv.settimeout(timeout)
        print("ready", flush=True)
        conn, peer = srv.accept()
        with conn:
            conn.settimeout(timeout)
            start, n = time.monotonic(), 0
            while data := conn.recv(CHUNK):
                n += len(data)
        print(n, time.monotonic() - start, peer[0], flush=True)


def tcp_send(address: str, port: int, nbytes: int, timeout: float) -> None:
    with socket.create_connection((address, port), timeout=timeout) as conn:
        left, chunk = nbytes, memoryview(bytes(CHUNK))
        while left:
            conn.sendall(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))
        conn.shutdown(socket.SHUT_WR)


def udp_recv(port: int, timeout: float) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", port))
        sock.settimeout(timeout)
        print("ready", flush=True)
        try:
            address, port = sock.recvfrom(2048)[1]
            print(address, port)
        except TimeoutError:
            print("none")


def udp_send(address: str, port: int, seconds: float, source_port: int = 0) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", source_port))
        for _ in range(int(seconds / UDP_INTERVAL)):
            sock.sendto(b"hello", (address, port))
            time.sleep(UDP_INTERVAL)


def udp_print(address: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((address, port))
        print("ready", flush=True)
        while True:
            print(sock.recv(2048).decode(errors="replace"), flush=True)


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    if command == "tcp-recv":
        tcp_recv(int(args[0]), float(args[1]))
    elif command == "tcp-send":
        tcp_send(args[0], int(args[1]), int(args[2]), float(args[3]))
    elif command == "udp-recv":
        udp_recv(int(args[0]), float(args[1]))
    elif command == "udp-send":
        udp_send(args[0], int(args[1]), float(args[2]), *(int(a) for a in args[3:4]))
    elif command == "udp-print":
        udp_print(args[0], int(args[1]))
    else:
        print(f"unknown command {command!r} (see the module docstring)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
