"""``probe_hostile CONFIG STATUS``: a node that answers probes meant for others.

For tests/integration/test_prober.py (node D). It answers its own probes honestly, and
every probe meant for someone else twice: as itself (a valid D->sender MAC, echoing the
nonce) and claiming to be the intended recipient. ``CONFIG`` (JSON): its ``key`` and the
``known`` senders' public keys; ``STATUS`` (JSON, rewritten after each datagram): how many
``honest`` and ``hostile`` answers it sent.
"""

from __future__ import annotations

import json
import socket
import sys
from ipaddress import IPv4Address
from pathlib import Path

from overlayd.probe.wire import Probe, ProbeCodec, ProbeError
from overlayd.values.keys import PrivateKey, PublicKey
from tests.lab.tools import write_json

PORT = 8473


def serve(codec: ProbeCodec, known: set[PublicKey], status: Path) -> None:
    counts = {"honest": 0, "hostile": 0}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", PORT))
        while True:
            data, src = sock.recvfrom(2048)
            observed = (IPv4Address(src[0]), src[1])
            try:
                msg = codec.decode(data, known=known.__contains__, expects_reply=lambda k, n: False)
            except ProbeError:
                sender = PublicKey(data[8:40])
                if sender not in known:
                    continue
                probe = Probe(sender, data[72:88], int.from_bytes(data[88:96], "big"))
                as_me = codec.encode_reply(probe, observed)
                sock.sendto(as_me, src)
                as_them = bytearray(as_me)
                as_them[8:40] = data[40:72]  # claim to be the intended recipient
                sock.sendto(bytes(as_them), src)
                counts["hostile"] += 1
            else:
                if isinstance(msg, Probe):
                    sock.sendto(codec.encode_reply(msg, observed), src)
                    counts["honest"] += 1
            write_json(status, counts)


def main(argv: list[str]) -> int:
    config, status = argv
    cfg = json.loads(Path(config).read_text())
    codec = ProbeCodec(PrivateKey.from_base64(cfg["key"]))
    serve(codec, {PublicKey.from_base64(k) for k in cfg["known"]}, Path(status))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
