"""Lease churn for tests: join/change/leave events at a fixed rate, bounded in time.

Run inside a test namespace (``tool("lease_churn", ENDPOINT, RATE, SECONDS, SITE,
*SUBNETS)``, see ``main``); each cycle of a synthetic
peer is three events: it joins, changes its record, leaves. Records carry no probe key, so
daemons program them without probing anyone.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

from overlayd.store.etcd import EtcdSettings, EtcdStore
from overlayd.values.lease import LeaseRecord
from tests.builders import lease


def synthetic(subnet: IPv4Network, n: int, site: str) -> LeaseRecord:
    """A valid peer record that no host serves (its underlay address is unused)."""
    underlay = IPv4Address("10.77.0.200") + n % 50
    return lease(
        subnet,
        underlay,
        node=f"churn-{n}",
        node_id=f"churn{n:08x}",
        vtep_mac=f"02:cc:00:00:{n // 256 % 256:02x}:{n % 256:02x}",
        site=site,
        private_ips=(underlay,),
    )


async def churn(
    endpoint: str,
    subnets: list[IPv4Network],
    rate: float,
    seconds: float,
    site: str,
    workers: int = 4,
) -> int:
    """Write ``rate`` lease events per second for ``seconds``; returns how many were made.

    ``workers`` write in parallel (each its own share of ``subnets``, at its share of the
    rate): one etcd round trip per event in sequence is slower than 200 a second here.
    """
    store = EtcdStore(EtcdSettings(endpoints=(endpoint,)))
    await store.connect()
    t0 = time.monotonic()

    async def worker(k: int) -> int:
        mine = subnets[k::workers]
        done = n = 0
        while time.monotonic() - t0 < seconds:
            rec = synthetic(mine[n % len(mine)], n * workers + k, site)
            changed = replace(rec, public_ip=rec.public_ip + 1)
            for step in range(3):
                if (wait := t0 + done * workers / rate - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                if step == 0:
                    await store.create_lease(rec, 0)
                elif step == 1:
                    await store.replace_lease(rec, changed, 0)
                else:
                    await store.delete_lease(rec.subnet)
                done += 1
            n += 1
        return done

    try:
        return sum(await asyncio.gather(*(worker(k) for k in range(workers))))
    finally:
        await store.close()


def main(argv: list[str]) -> int:
    """``lease_churn ENDPOINT RATE SECONDS SITE SUBNET...``: print the number of events."""
    endpoint, rate, seconds, site, *subnets = argv
    nets = [IPv4Network(s) for s in subnets]
    print(asyncio.run(churn(endpoint, nets, float(rate), float(seconds), site)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
