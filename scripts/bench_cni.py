#!/usr/bin/env python3
"""ADD/DEL latency of the ``overlay`` CNI plugin against the stock ``bridge`` plugin.

Both get the same work: ``bridge`` runs directly with exactly the delegate configuration
the plugin builds (same bridge, IPAM, MTU, routes), so the difference is the plugin's own
cost (Python start-up, imports, subnet file, cache write, one extra exec). Everything
happens in fresh ``ovcni-bench-*`` namespaces, deleted at the end. Needs root.

    .venv/bin/python scripts/bench_cni.py [--iterations 30] [--ipmasq]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from overlayd.cni.install import build_zipapp  # noqa: E402 - after the path setup
from overlayd.cni.netconf import NetConf, delegate_config  # noqa: E402
from overlayd.disk.subnet_file import SubnetFile, write_subnet_file  # noqa: E402

CNI_BIN = Path("/usr/lib/cni")
VERSION = "1.0.0"


@dataclass(frozen=True)
class Contender:
    """One way of attaching a container: an executable and the config it reads."""

    label: str
    executable: Path
    config: Mapping[str, Any]


@contextmanager
def namespaces(names: list[str]) -> Iterator[None]:
    created = []
    try:
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True)
            created.append(name)
        yield
    finally:
        for name in created:
            subprocess.run(["ip", "netns", "del", name], check=False)


def call(contender: Contender, command: str, host_ns: str, ctr_ns: str, ctr_id: str) -> float:
    """Run one CNI command from inside the host namespace; seconds it took."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": ctr_id,
        "CNI_NETNS": f"/run/netns/{ctr_ns}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(CNI_BIN),
    }
    argv = ["nsenter", f"--net=/run/netns/{host_ns}", str(contender.executable)]
    stdin = json.dumps(contender.config).encode()
    start = time.perf_counter()
    proc = subprocess.run(argv, input=stdin, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{contender.label} {command} failed: {proc.stdout!r} {proc.stderr!r}")
    return elapsed


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return f"median {statistics.median(ordered) * 1000:6.1f} ms  p90 {p90 * 1000:6.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument(
        "--ipmasq",
        action="store_true",
        help="let the bridge masquerade (iptables calls dominate then)",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_cni: needs root (network namespaces)")

    work = Path(tempfile.mkdtemp(prefix="ovcni-bench-"))
    tag = secrets.token_hex(3)
    host_ns = f"ovcni-bench-h-{tag}"
    ctr_ns = [f"ovcni-bench-c{i}-{tag}" for i in range(args.iterations)]
    try:
        subnet = SubnetFile(
            IPv4Network("10.244.0.0/16"),
            IPv4Interface("10.244.7.1/24"),
            1400,
            ipmasq=not args.ipmasq,  # overlayd masquerading means the bridge does not
        )
        write_subnet_file(work / "subnet.env", subnet)
        plugin_conf = {
            "cniVersion": VERSION, "name": "ovcni-bench", "type": "overlay",
            "subnetFile": str(work / "subnet.env"), "dataDir": str(work / "cache"),
            "delegate": {"ipam": {"dataDir": str(work / "leases")}},
        }  # fmt: skip
        conf = NetConf.parse(plugin_conf, VERSION, "ADD")
        zipapp = work / "bin" / "overlay"
        zipapp.parent.mkdir()
        build_zipapp(zipapp)
        contenders = [
            Contender(
                "bridge (direct)", CNI_BIN / "bridge", delegate_config(conf, subnet, VERSION)
            ),
            Contender("overlay (zipapp)", zipapp, plugin_conf),
            Contender("overlay (cni/overlay)", REPO / "cni" / "overlay", plugin_conf),
        ]
        times: dict[tuple[str, str], list[float]] = {}
        with namespaces([host_ns, *ctr_ns]):
            # Warm-up: the first ADD creates the bridge, which no later ADD repeats.
            for contender in contenders:
                call(contender, "ADD", host_ns, ctr_ns[0], "warmup")
                call(contender, "DEL", host_ns, ctr_ns[0], "warmup")
            # Interleaved, so drift on the machine hits every contender alike.
            for i, ns in enumerate(ctr_ns):
                for contender in contenders:
                    ctr_id = f"bench{i}"
                    add = call(contender, "ADD", host_ns, ns, ctr_id)
                    delete = call(contender, "DEL", host_ns, ns, ctr_id)
                    times.setdefault((contender.label, "ADD"), []).append(add)
                    times.setdefault((contender.label, "DEL"), []).append(delete)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"{args.iterations} iterations, cniVersion {VERSION}, ipMasq in bridge: {args.ipmasq}")
    for command in ("ADD", "DEL"):
        base = statistics.median(times[(contenders[0].label, command)])
        for contender in contenders:
            samples = times[(contender.label, command)]
            ratio = statistics.median(samples) / base
            print(f"{command} {contender.label:22} {summary(samples)}  ratio {ratio:4.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
