"""``--ip-masq``: nftables masquerade for traffic leaving the overlay, in our own table.

The rules are flannel's, in table ``ip overlayd`` (nothing else is touched): traffic
within the overlay is left alone; overlay traffic to the outside is masqueraded; outside
traffic to another node's subnet via this node is masqueraded so replies come back here.
The table is replaced in one ``nft -f`` transaction, so it is never half-written.
"""

from __future__ import annotations

from ipaddress import IPv4Network

from overlayd.dataplane.nft import delete_table, replace_table, run_nft

TABLE = "overlayd"


def masq_ruleset(network: IPv4Network, subnet: IPv4Network) -> str:
    return replace_table(
        "ip",
        TABLE,
        f"""  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {network} ip daddr {network} return
    ip saddr {network} ip daddr != 224.0.0.0/4 masquerade fully-random
    ip saddr != {network} ip daddr {subnet} return
    ip saddr != {network} ip daddr {network} masquerade fully-random
  }}
""",
    )


def apply_masq(network: IPv4Network, subnet: IPv4Network) -> None:
    """Install (or replace) our masquerade table."""
    run_nft(masq_ruleset(network, subnet))


def remove_masq() -> None:
    """Remove our table if present (``--ip-masq`` turned off)."""
    run_nft(delete_table("ip", TABLE))
