"""``vxlan_forge SRC DST SMAC DMAC ISRC IDST PORT TAG``: send forged VXLAN frames.

From ``SRC`` (spoofed as need be) to ``DST``'s VXLAN port: inner Ethernet ``SMAC`` ->
``DMAC``, inner IP ``ISRC`` -> ``IDST``, carrying a UDP datagram to ``PORT`` and an ICMP
echo request (id 4242), both with payload ``TAG``; each frame three times.
"""

from __future__ import annotations

import sys

# scapy's layers come from explicit modules: ``scapy.all`` star-imports them, unseen by mypy
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw
from scapy.sendrecv import send


def main(argv: list[str]) -> int:
    src, dst, smac, dmac, isrc, idst, port, tag = argv
    outer = IP(src=src, dst=dst) / UDP(sport=47001, dport=8472) / VXLAN(vni=1, flags=0x08)
    inner = Ether(src=smac, dst=dmac) / IP(src=isrc, dst=idst)
    frames = [
        outer / inner / UDP(sport=40000, dport=int(port)) / Raw(tag.encode()),
        outer / inner / ICMP(type=8, id=4242, seq=1) / Raw(tag.encode()),
    ]
    send(frames * 3, verbose=0, inter=0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
