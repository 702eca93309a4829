"""``vxlan_flood DST RATE SECONDS``: send forged VXLAN frames to ``DST`` at ``RATE`` per second
for ``SECONDS`` (scripts/bench_ingress.py); prints how many were sent."""

from __future__ import annotations

import socket
import sys
import time

# scapy's layers come from explicit modules: ``scapy.all`` star-imports them, unseen by mypy
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw


def flood(dst: str, rate: int, seconds: float) -> int:
    frame = bytes(
        VXLAN(vni=1, flags=0x08)
        / Ether(dst="02:00:00:00:00:01")
        / IP(src="10.244.9.9", dst="10.244.1.0")
        / UDP(dport=9)
        / Raw(b"x" * 64)
    )
    sent, start, batch = 0, time.monotonic(), max(1, rate // 100)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        while (elapsed := time.monotonic() - start) < seconds:
            if sent < rate * elapsed:
                for _ in range(batch):
                    sock.sendto(frame, (dst, 8472))
                sent += batch
            else:
                time.sleep(0.002)
    return sent


def main(argv: list[str]) -> int:
    dst, rate, seconds = argv
    print(flood(dst, int(rate), float(seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
