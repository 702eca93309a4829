"""``--ip-masq``: nftables masquerade for traffic leaving the overlay, in our own table.

The rules are flannel's, in table ``ip overlayd`` (nothing else is touched): traffic
within the overlay is left alone; overlay traffic to the outside is masqueraded; outside
traffic to another node's subnet via this node is masqueraded so replies come back here.
The table is replaced in one ``nft -f`` transaction, so it is never half-written.
"""

from __future__ import annotations

import subprocess
from ipaddress import IPv4Network

from overlayd.errors import KernelError

TABLE = "overlayd"


def masq_ruleset(network: IPv4Network, subnet: IPv4Network) -> str:
    return f"""table ip {TABLE} {{}}
delete table ip {TABLE}
table ip {TABLE} {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {network} ip daddr {network} return
    ip saddr {network} ip daddr != 224.0.0.0/4 masquerade fully-random
    ip saddr != {network} ip daddr {subnet} return
    ip saddr != {network} ip daddr {network} masquerade fully-random
  }}
}}
"""


def _nft(script: str) -> None:
    try:
        proc = subprocess.run(
            ["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelError(f"cannot run nft: {exc}") from None
    if proc.returncode != 0:
        raise KernelError(f"nft failed: {proc.stderr.strip()}")


def apply_masq(network: IPv4Network, subnet: IPv4Network) -> None:
    """Install (or replace) our masquerade table."""
    _nft(masq_ruleset(network, subnet))


def remove_masq() -> None:
    """Remove our table if present (``--ip-masq`` turned off)."""
    _nft(f"table ip {TABLE} {{}}\ndelete table ip {TABLE}\n")
