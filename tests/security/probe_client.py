"""Sends authenticated path probes as a given key and says whether one was answered.

Run inside a test namespace (it imports only ``overlayd``, so it runs by file path)::

    python probe_client.py KEY_FILE RECIPIENT_PUBLIC_KEY ADDRESS [PORT]

``KEY_FILE`` holds the sender's private key in ``wg genkey`` format (a node's
``node-key``, or a saved copy of an old one). Prints one JSON object: ``{"answered":
bool, "rejected": [reasons our side rejected replies for]}``. Several probes are sent
(``ATTEMPTS``), so a single lost datagram does not read as a rejection.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

from overlayd.probe.wire import DEFAULT_PORT, ProbeCodec, ProbeError, Reply
from overlayd.values.keys import PrivateKey, PublicKey

ATTEMPTS = 3
TIMEOUT = 0.7  # seconds each probe waits for its reply


def probe(private: PrivateKey, recipient: PublicKey, address: str, port: int) -> dict[str, object]:
    """Probe ``recipient`` at ``address:port`` up to ``ATTEMPTS`` times."""
    codec = ProbeCodec(private)
    rejected: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(ATTEMPTS):
            nonce, data = codec.encode_probe(recipient)

            def ours(key: PublicKey, echo: bytes, nonce: bytes = nonce) -> bool:
                return key == recipient and echo == nonce

            sock.sendto(data, (address, port))
            deadline = time.monotonic() + TIMEOUT
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    answer, _ = sock.recvfrom(2048)
                except TimeoutError:
                    break
                try:
                    message = codec.decode(
                        answer,
                        known=recipient.__eq__,
                        expects_reply=ours,
                    )
                except ProbeError as exc:
                    rejected.append(exc.reason.value)
                    continue
                if isinstance(message, Reply):
                    return {"answered": True, "rejected": rejected}
    return {"answered": False, "rejected": rejected}


def main(argv: list[str]) -> None:
    key_file, recipient, address = argv[:3]
    port = int(argv[3]) if len(argv) > 3 else DEFAULT_PORT
    private = PrivateKey.from_base64(Path(key_file).read_text())
    print(json.dumps(probe(private, PublicKey.from_base64(recipient), address, port)))


if __name__ == "__main__":
    main(sys.argv[1:])
