"""``--ip-masq``: nftables masquerade for traffic leaving the overlay, in our own table.

The rules are flannel's, in table ``ip overlayd`` (nothing else is touched): traffic
within the overlay is left alone; overlay traffic to the outside is masqueraded; outside
traffic to another node's subnet via this node is masqueraded so replies come back here.
The table is replaced in one ``nft -f`` transaction, so it is never half-written, and
only when it has to be (``MasqTable``): the resync tick reads it back and leaves it alone
while it holds what we wrote, so an idle daemon writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Network

from overlayd.dataplane.nft import delete_table, list_table, replace_table, run_nft

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


class MasqTable:
    """Keeps our table equal to the rules for the held subnet; blocking (runs nft).

    ``run`` applies a script and ``read`` lists a table (None: absent), as nft.py's.
    """

    def __init__(
        self,
        run: Callable[[str], None] = run_nft,
        read: Callable[[str, str], str | None] = list_table,
    ) -> None:
        self._run, self._read = run, read
        self._written: str | None = None  # the script the table last took
        self._listing: str | None = None  # the table as read back right after

    def apply(self, network: IPv4Network, subnet: IPv4Network) -> bool:
        """Write the rules for ``subnet`` unless the table already holds them (read back:
        a table removed or edited by someone else is written again); True if written.
        ``KernelError`` if nft refuses."""
        script = masq_ruleset(network, subnet)
        if script == self._written and self._read("ip", TABLE) == self._listing:
            return False
        self._written = None  # unknown until nft has taken it
        self._run(script)
        self._written, self._listing = script, self._read("ip", TABLE)
        return True


def apply_masq(network: IPv4Network, subnet: IPv4Network) -> None:
    """Install (or replace) our masquerade table."""
    run_nft(masq_ruleset(network, subnet))


def remove_masq() -> None:
    """Remove our table if present (``--ip-masq`` turned off)."""
    run_nft(delete_table("ip", TABLE))
