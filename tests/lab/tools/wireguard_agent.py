"""``wireguard_agent CONFIG STATUS``: the WireGuard driver run as the daemon's loop runs it.

For tests/integration/test_wireguard_driver.py. Re-reads ``CONFIG`` (JSON: ``ifname``,
``log``, ``private_key``, ``port``, ``address``, ``peers`` with ``public_key``,
``endpoint``, ``allowed_ips``, ``keepalive``; ``stop_on_exit``) and runs ``sync`` every
100 ms or as soon as wireguard-go exits; re-adds ``address`` when the device was
recreated; rewrites ``STATUS`` (JSON) after every pass. Ends on SIGTERM.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from overlayd.dataplane.netlink.link import Links
from overlayd.dataplane.wireguard.driver import open_driver, sync
from overlayd.values.errors import WireGuardError
from overlayd.values.keys import PrivateKey, PublicKey
from overlayd.values.wireguard import Endpoint, WgDeviceConfig, WgPeerConfig
from tests.lab.tools import write_json


def peers_of(cfg: dict[str, Any]) -> list[WgPeerConfig]:
    return [
        WgPeerConfig(
            PublicKey.from_base64(p["public_key"]),
            Endpoint.parse(p["endpoint"]) if p["endpoint"] else None,
            tuple(IPv4Network(n) for n in p["allowed_ips"]),
            p["keepalive"],
        )
        for p in cfg["peers"]
    ]


def main(argv: list[str]) -> int:
    config_path, status_path = Path(argv[0]), Path(argv[1])
    wake, stop = threading.Event(), threading.Event()

    def on_term(*_: object) -> None:
        stop.set()
        wake.set()

    signal.signal(signal.SIGTERM, on_term)
    cfg = json.loads(config_path.read_text())
    links = Links()
    driver = open_driver(cfg["ifname"], links, on_exit=wake.set, log_path=Path(cfg["log"]))
    status: dict[str, Any] = {
        "kind": driver.kind,
        "loops": 0,
        "recreated": 0,
        "changed": 0,
        "errors": [],
    }
    while not stop.is_set():
        cfg = json.loads(config_path.read_text())
        device = WgDeviceConfig(PrivateKey.from_base64(cfg["private_key"]), cfg["port"], mtu=1420)
        try:
            result = sync(driver, device, peers_of(cfg))
        except WireGuardError as exc:
            status["errors"].append(str(exc))
        else:
            if result.recreated:
                subprocess.run(
                    ["ip", "addr", "replace", cfg["address"], "dev", cfg["ifname"]], check=True
                )
                status["recreated"] += 1
                status["restored_at"] = time.time()
            status["changed"] += len(result.changes)
            status["last_changes"] = len(result.changes)
            status["starts"] = getattr(driver, "starts", None)  # userspace driver only
            status["loops"] += 1
        write_json(status_path, status)
        wake.wait(0.1)
        wake.clear()
    driver.close(stop=cfg.get("stop_on_exit", False))
    links.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
