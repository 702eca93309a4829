"""Cross-site TCP throughput over overlayd's ``wireguard`` backend vs a hand-made tunnel.

Issue 4's benchmark. Builds the multi-cloud test world, inits a ``wireguard`` network and
runs overlayd on two hosts of different clouds (``--src``, ``--dst``; default a1 in
cloud A, b1 in cloud B; both with their ``--public-ip``). In the same two namespaces it
then builds a second tunnel by hand -- ``wireguard-go`` + ``wg set`` + ``ip``, its own
device, keys, port (51821) and addresses (10.250.0.1-2), the same MTU rule (underlay -
80), endpoints at the hosts' public addresses, keepalive 25 s like the daemon's -- and
measures, alternating ``--rounds`` times, iperf3 (``-t --seconds``) from src to dst:

* overlay: to dst's overlay address, through the daemon's wireguard-go device;
* by hand: to dst's address on the hand-made device.

Reports both throughputs (median of the rounds), their ratio (goal >= 0.9), and the CPU
the two wireguard-go processes (sender and receiver side) used during each measurement,
read from /proc (utime + stime), besides iperf3's own CPU figures. Everything it made is
removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.daemons import BIN, OverlaydProc, ns_run
from tests.lab.netns import Namespace
from tests.lab.world import Host, World, build_multicloud_world, destroy, ping

UAPI_DIR = Path("/var/run/wireguard")
HAND_PORT = 51821
HAND_NET = "10.250.0"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wireguard_go_pid(ns: Namespace, ifname: str) -> int:
    """pid of the wireguard-go serving ``ifname`` in ``ns``."""
    out = subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True, text=True).stdout
    for pid in out.split():
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if Path(cmd[0].decode()).name == "wireguard-go" and ifname.encode() in cmd:
                return int(pid)
    raise RuntimeError(f"no wireguard-go for {ifname} in {ns.name}")


def wg_device(ns: Namespace) -> str:
    """The daemon's WireGuard device in ``ns`` (the only ``ovwg*`` tun device)."""
    out = ns.run(["ip", "-o", "link", "show", "type", "tun"]).stdout
    names = [line.split(":")[1].strip() for line in out.splitlines()]
    found = [n for n in names if n.startswith("ovwg")]
    if len(found) != 1:
        raise RuntimeError(f"{ns.name}: WireGuard devices {names}")
    return found[0]


def underlay_mtu(host: Host) -> int:
    link = json.loads(host.ns.run(["ip", "-j", "link", "show", host.iface]).stdout)[0]
    mtu: int = link["mtu"]
    return mtu


@dataclass
class HandTunnel:
    """A wireguard-go tunnel between two hosts, configured by hand; ``close`` removes it."""

    a: Host
    b: Host
    tag: str
    procs: list[subprocess.Popen[bytes]]
    ifnames: dict[str, str]  # per host: wireguard-go's UAPI sockets share one directory

    @classmethod
    def build(cls, a: Host, b: Host, mtu: int, tag: str, logdir: Path) -> HandTunnel:
        names = {h.name: f"ovbh{tag}{i}"[:15] for i, h in enumerate((a, b))}
        tunnel = cls(a, b, tag, [], names)
        try:
            keys = {}
            for h in (a, b):
                private = subprocess.run(
                    ["wg", "genkey"], capture_output=True, text=True, check=True
                ).stdout.strip()
                public = subprocess.run(
                    ["wg", "pubkey"], input=private, capture_output=True, text=True, check=True
                ).stdout.strip()
                keys[h.name] = (private, public)
            for i, (me, peer) in enumerate(((a, b), (b, a)), start=1):
                ifname = names[me.name]
                tunnel._start(me, logdir)
                key_file = logdir / f"{me.name}.key"
                key_file.write_text(keys[me.name][0] + "\n")
                key_file.chmod(0o600)
                endpoint = peer.public if peer.public is not None else peer.ip
                other = 2 if i == 1 else 1
                me.ns.run(["wg", "set", ifname, "listen-port", str(HAND_PORT),
                           "private-key", str(key_file),
                           "peer", keys[peer.name][1], "endpoint", f"{endpoint}:{HAND_PORT}",
                           "allowed-ips", f"{HAND_NET}.{other}/32",
                           "persistent-keepalive", "25"])  # fmt: skip
                me.ns.run(["ip", "address", "add", f"{HAND_NET}.{i}/24", "dev", ifname])
                me.ns.run(["ip", "link", "set", ifname, "mtu", str(mtu), "up"])
        except BaseException:
            tunnel.close()
            raise
        return tunnel

    def _start(self, host: Host, logdir: Path) -> None:
        with open(logdir / f"wireguard-go-{host.name}.log", "ab") as log:
            proc = host.ns.popen(
                ["wireguard-go", "-f", self.ifnames[host.name]],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env=dict(os.environ, LOG_LEVEL="error", WG_PROCESS_FOREGROUND="1"),
                start_new_session=True,
            )  # fmt: skip
        self.procs.append(proc)
        deadline = time.monotonic() + 5
        while (
            subprocess.run(
                host.ns.argv(["ip", "link", "show", self.ifnames[host.name]]), capture_output=True
            ).returncode
            or not (UAPI_DIR / f"{self.ifnames[host.name]}.sock").exists()
        ):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"wireguard-go did not start in {host.ns.name}")
            time.sleep(0.05)

    def address(self, host: Host) -> IPv4Address:
        return IPv4Address(f"{HAND_NET}.{1 if host == self.a else 2}")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for ifname in self.ifnames.values():
            with contextlib.suppress(FileNotFoundError):
                (UAPI_DIR / f"{ifname}.sock").unlink()
        self.procs.clear()


def iperf(
    src: Host, dst: Host, address: IPv4Address, seconds: int, port: int, wg_pids: list[int]
) -> dict[str, float]:
    """iperf3 from ``src`` to ``address`` (a server in ``dst``); throughput and CPU."""
    server = dst.ns.popen(
        ["iperf3", "-s", "-1", "-B", str(address), "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 5
        while f":{port} " not in dst.ns.run(["ss", "-Htln"]).stdout:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("iperf3 server did not start")
            time.sleep(0.05)
        before = [cpu_seconds(p) for p in wg_pids]
        t0 = time.monotonic()
        out = src.ns.run(
            ["iperf3", "-c", str(address), "-p", str(port), "-t", str(seconds), "-J"],
            check=False, timeout=seconds + 30,
        ).stdout  # fmt: skip
        wall = time.monotonic() - t0
        after = [cpu_seconds(p) for p in wg_pids]
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
    result: dict[str, Any] = json.loads(out)
    if "error" in result:
        raise RuntimeError(f"iperf3 {src.name} -> {address}: {result['error']}")
    end = result["end"]
    cpu = end.get("cpu_utilization_percent", {})
    return {
        "mbit_s": end["sum_received"]["bits_per_second"] / 1e6,
        "retransmits": float(end["sum_sent"].get("retransmits", 0)),
        "wg_cpu_s_sender": after[0] - before[0],
        "wg_cpu_s_receiver": after[1] - before[1],
        "wg_cpu_pct": 100 * (sum(after) - sum(before)) / wall,
        "iperf_cpu_pct_sender": float(cpu.get("host_total", 0.0)),
        "iperf_cpu_pct_receiver": float(cpu.get("remote_total", 0.0)),
        "wall_s": wall,
    }


def summary(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    tag = f"{os.getpid() & 0xFFFF:04x}"
    world: World | None = None
    daemons: list[OverlaydProc] = []
    tunnel: HandTunnel | None = None
    daemon_devices: list[str] = []
    ok = False
    try:
        world = build_multicloud_world(f"ovbw{tag}-")
        src, dst = world.host(args.src), world.host(args.dst)
        if src.site == dst.site:
            raise SystemExit("--src and --dst must be in different sites")
        ns_run(src.ns.name, str(BIN / "overlayctl"), "--etcd-endpoints", world.etcd_endpoint,
               "network", "init", "--network", "10.244.0.0/16",
               "--backend", "wireguard")  # fmt: skip
        daemons = [OverlaydProc(world, h).start() for h in (src, dst)]
        for d in daemons:
            d.wait_ready()
        overlay_dst = daemons[1].overlay_ip()
        deadline = time.monotonic() + 30
        while not ping(src.ns, overlay_dst).ok:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{src.name} cannot reach {dst.name} over the overlay")
        daemon_devices = [wg_device(h.ns) for h in (src, dst)]
        overlay_pids = [
            wireguard_go_pid(h.ns, dev) for h, dev in zip((src, dst), daemon_devices, strict=True)
        ]
        overlay_mtu = json.loads(
            src.ns.run(["ip", "-j", "link", "show", daemon_devices[0]]).stdout
        )[0]["mtu"]

        mtu = underlay_mtu(src) - 80
        tunnel = HandTunnel.build(src, dst, mtu, tag, world.workdir)
        hand_dst = tunnel.address(dst)
        deadline = time.monotonic() + 15
        while not ping(src.ns, hand_dst).ok:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{src.name} cannot reach {dst.name} over the hand tunnel")
        hand_pids = [wireguard_go_pid(h.ns, tunnel.ifnames[h.name]) for h in (src, dst)]

        rows: dict[str, list[dict[str, float]]] = {"overlay": [], "hand": []}
        for i in range(args.rounds):
            order = ("overlay", "hand") if i % 2 == 0 else ("hand", "overlay")
            for which in order:
                if which == "overlay":
                    r = iperf(src, dst, overlay_dst, args.seconds, 5201, overlay_pids)
                else:
                    r = iperf(src, dst, hand_dst, args.seconds, 5202, hand_pids)
                rows[which].append(r)
                print(f"  round {i + 1} {which:7}: {r['mbit_s']:7.0f} Mbit/s, wireguard-go "
                      f"{r['wg_cpu_pct']:.0f}% CPU", file=sys.stderr, flush=True)  # fmt: skip
        overlay, hand = summary(rows["overlay"]), summary(rows["hand"])
        ok = True
        return {
            "src": src.name,
            "dst": dst.name,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "mtu": {"overlay_wg_device": overlay_mtu, "hand_wg_device": mtu},
            "overlay": overlay,
            "hand": hand,
            "ratio": overlay["mbit_s"] / hand["mbit_s"],
            "runs": rows,
        }
    finally:
        if tunnel is not None:
            tunnel.close()
        for d in daemons:
            d.kill9()
        if world is not None:
            # also kills the daemons' wireguard-go; logs are kept when something failed
            destroy(world, remove_workdir=ok and not args.keep)
            if not ok or args.keep:
                print(f"logs kept in {world.workdir}", file=sys.stderr)
        for dev in daemon_devices:
            with contextlib.suppress(FileNotFoundError):
                (UAPI_DIR / f"{dev}.sock").unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", default="a1", help="sending host (default a1, cloud A)")
    parser.add_argument("--dst", default="b1", help="receiving host (default b1, cloud B)")
    parser.add_argument("--seconds", type=int, default=10, help="iperf3 -t per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each tunnel")
    parser.add_argument("--keep", action="store_true", help="keep the logs (workdir)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    o, h = result["overlay"], result["hand"]
    print(f"cross-site TCP {result['src']} -> {result['dst']}, iperf3 -t {args.seconds}, "
          f"median of {args.rounds}; WireGuard MTU {result['mtu']['overlay_wg_device']} "
          f"(overlay) / {result['mtu']['hand_wg_device']} (by hand)")  # fmt: skip
    for name, r in (("overlay (daemon)", o), ("wireguard-go by hand", h)):
        print(f"  {name:21} {r['mbit_s']:7.0f} Mbit/s  retransmits {r['retransmits']:.0f}  "
              f"wireguard-go CPU {r['wg_cpu_s_sender']:.1f}s + {r['wg_cpu_s_receiver']:.1f}s "
              f"({r['wg_cpu_pct']:.0f}% of a core)  iperf3 CPU {r['iperf_cpu_pct_sender']:.0f}% / "
              f"{r['iperf_cpu_pct_receiver']:.0f}%")  # fmt: skip
    verdict = "ok" if result["ratio"] >= 0.9 else "BELOW GOAL"
    print(f"  ratio overlay / by hand: {result['ratio']:.3f} (goal >= 0.9: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
