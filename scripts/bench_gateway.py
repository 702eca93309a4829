"""Gateway topology benchmark (issue 6).

1. Failover: in a fresh multi-cloud world per sample (gateway topology), a member of
   cloud A pings a host of cloud B every 50 ms while cloud A's gateway is killed (daemon
   and wireguard-go: the host dies) or silently drops forwarded traffic; the traffic lost
   is the failover time. ``--runs`` samples of each kind; median and worst.
2. Planner only: per-host peer counts (VXLAN and WireGuard) for a simulated network of
   500 hosts in 5 sites, gateway topology against full mesh, and the time of one plan.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from overlayd.planning.gateway import plan_gateway
from overlayd.planning.vxlan import Planner
from overlayd.planning.wireguard import plan_wireguard
from overlayd.values.config import parse_config
from overlayd.values.gateway_state import GatewayClaim
from overlayd.values.kernel_state import MacAddress
from overlayd.values.keys import PrivateKey
from overlayd.values.lease import LeaseRecord
from tests.daemons import running, wait_until
from tests.lab.world import build_multicloud_world, destroy
from tests.topology import (
    HOSTS,
    drop_forwarded,
    gateway_of,
    init_gateway_network,
    kill_host,
    outage,
)


def failover_sample(kind: str, index: int) -> float:
    world = build_multicloud_world(f"ovbg{index}-")
    try:
        init_gateway_network(world)
        with running(world, HOSTS) as daemons:
            wait_until(lambda: gateway_of(world, "cloud-a") is not None, 15, "cloud A gateway")
            breaker = kill_host if kind == "kill" else drop_forwarded
            time.sleep(2)  # handshakes and probes settled
            _, _, lost = outage(world, daemons, lambda name: breaker(daemons, name))
            return lost
    finally:
        destroy(world, remove_workdir=True)


def simulated_network(hosts: int, sites: int) -> list[LeaseRecord]:
    records = []
    for i in range(hosts):
        site = f"site-{i % sites}"
        records.append(
            LeaseRecord(
                subnet=IPv4Network(f"10.{(i + 1) >> 8}.{(i + 1) & 255}.0/24"),
                node=f"host-{i}",
                node_id=f"id-{i}",
                public_ip=IPv4Address(f"198.18.{i >> 8}.{i & 255}"),
                vtep_mac=MacAddress.from_bytes(bytes([2, 0, 0, 0, i >> 8, i & 255])),
                vni=1,
                site=site,
                private_ips=(IPv4Address(f"172.16.{i >> 8}.{i & 255}"),),
                public_ips=(IPv4Address(f"198.18.{i >> 8}.{i & 255}"),),
                backend_type="vxlan+wireguard",
                public_key=PrivateKey.generate().public_key().base64,
                probe_port=8473,
                wireguard_port=51820,
            )
        )
    return records


def planner_counts(hosts: int, sites: int) -> None:
    base = '{"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan+wireguard"}'
    gateway_cfg = parse_config(base + ', "Topology": {"Mode": "gateway"}}')
    mesh_cfg = parse_config(base + "}")
    records = simulated_network(hosts, sites)
    leases = {r.subnet: r for r in records}
    claims: dict[str, GatewayClaim] = {}
    for r in records:  # the first host of each site is its gateway
        claims.setdefault(r.site, GatewayClaim(r.site, r.node, r.node_id, r.subnet))
    for label, cfg in (("gateway", gateway_cfg), ("full mesh", mesh_cfg)):
        counts: dict[str, list[tuple[int, int]]] = {}
        t0 = time.perf_counter()
        for me in records:
            if cfg is gateway_cfg:
                topo = plan_gateway(cfg, me, leases, claims)
                wg, role = topo.wireguard, topo.role
            else:
                wg, role = plan_wireguard(me, leases, cfg.backend, network=cfg.network), "mesh"
            vxlan = Planner().plan(me, wg.vxlan_leases, network=cfg.network)
            counts.setdefault(role, []).append((len(vxlan.paths), len(wg.peers)))
        per_plan = (time.perf_counter() - t0) / len(records) * 1000
        print(f"{label}: {hosts} hosts in {sites} sites, {per_plan:.1f} ms per host plan")
        for role, rows in sorted(counts.items()):
            vx = statistics.mean(v for v, _ in rows)
            wgs = statistics.mean(w for _, w in rows)
            print(f"  {role:>8} x{len(rows):<4} VXLAN peers {vx:6.1f}  WireGuard peers {wgs:6.1f}"
                  f"  total {vx + wgs:6.1f}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--hosts", type=int, default=500)
    parser.add_argument("--sites", type=int, default=5)
    parser.add_argument("--skip-failover", action="store_true")
    args = parser.parse_args()
    planner_counts(args.hosts, args.sites)
    if args.skip_failover:
        return 0
    for kind in ("kill", "drop"):
        samples = []
        for i in range(args.runs):
            lost = failover_sample(kind, i)
            samples.append(lost)
            print(f"{kind} #{i + 1}: traffic lost {lost:.2f}s", flush=True)
        print(f"{kind}: median {statistics.median(samples):.2f}s, worst {max(samples):.2f}s "
              f"over {len(samples)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
