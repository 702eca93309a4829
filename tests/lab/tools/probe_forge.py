"""``probe_forge``: from B's namespace, replay and forge B's probe replies to A.

For tests/integration/test_prober.py. Captures one genuine reply B (10.77.0.2, on ``b0``)
sent to A (10.77.0.1), then sends it three times again (replays) and two forged variants
(observed address rewritten; fresh nonce under the old MAC), each spoofing B's address
exactly as the genuine one. Prints ``{"sent": 5}``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

# scapy's layers come from explicit modules: ``scapy.all`` star-imports them, unseen by mypy
from scapy.config import conf
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw
from scapy.sendrecv import send, sniff

IFACE = "b0"
B, A, PORT, REPLY_LEN = "10.77.0.2", "10.77.0.1", 8473, 136


def is_reply(p: Any) -> bool:
    """Whether captured packet ``p`` is a probe reply from B to A."""
    return bool(
        IP in p
        and UDP in p
        and p[IP].src == B
        and p[IP].dst == A
        and p[UDP].sport == PORT
        and len(bytes(p[UDP].payload)) == REPLY_LEN
    )


def main(argv: list[str]) -> int:
    conf.verb = 0
    pkts = sniff(iface=IFACE, count=1, timeout=10, lfilter=is_reply)
    assert pkts, "no reply from B to A captured"
    p = pkts[0]
    payload = bytes(p[UDP].payload)

    def out(data: bytes) -> None:
        udp = UDP(sport=p[UDP].sport, dport=p[UDP].dport)
        send(IP(src=p[IP].src, dst=p[IP].dst) / udp / Raw(data), iface=IFACE)

    for _ in range(3):
        out(payload)  # replayed
    forged = bytearray(payload)
    forged[112:116] = bytes([198, 51, 100, 66])  # observed address rewritten
    out(bytes(forged))
    forged = bytearray(payload)
    forged[72:88] = bytes(16)  # fresh nonce, old MAC
    out(bytes(forged))
    print(json.dumps({"sent": 5}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
