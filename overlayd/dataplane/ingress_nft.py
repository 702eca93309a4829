"""The VXLAN ingress filter in nftables: our own table ``inet overlayd_ingress``.

One chain in prerouting at priority raw -- before conntrack, so a dropped datagram costs
no conntrack entry and never reaches the VXLAN socket (a forged flood costs the daemon
nothing) -- with two checks (see ``overlayd/planning/ingress.py`` for the policy):

* UDP to our VXLAN port, addressed to this host, from a source not in set ``peers``: drop;
* a frame arriving on our VXLAN device: IPv4 whose ``ether saddr . ip saddr`` is not in the
  interval set ``inner`` (VTEP MAC . prefix): drop; IPv6 (the overlay is IPv4 only): drop;
  anything else (ARP) passes.

The table is written whole (``replace_table``: one transaction) at start, when our
read-back finds it missing or changed, and after a failed update; otherwise a change is
one ``nft -f`` of ``add element`` / ``delete element`` lines. Nothing else is touched,
and ``remove`` deletes the table when the node stops using VXLAN.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address

from overlayd.dataplane.nft import delete_table, list_table, replace_table, run_nft
from overlayd.planning.ingress import (
    IngressDelta,
    IngressPlanner,
    IngressPolicy,
    Pair,
    VxlanPeers,
    carried_prefixes,
)
from overlayd.runtime.logs import Churn
from overlayd.values.errors import KernelError

log = logging.getLogger("overlayd.ingress")

FAMILY, TABLE = "inet", "overlayd_ingress"
SOURCES, PAIRS = "peers", "inner"
_COUNTERS = re.compile(r"counter packets \d+ bytes \d+")


def _sources(addrs: Iterable[IPv4Address]) -> str:
    return ", ".join(map(str, addrs))


def _pairs(pairs: Iterable[Pair]) -> str:
    return ", ".join(f"{mac} . {prefix}" for mac, prefix in pairs)


def _elements(text: str) -> str:
    return f"    elements = {{ {text} }}\n" if text else ""


def ingress_ruleset(policy: IngressPolicy) -> str:
    """The script that replaces our table with ``policy``, in one transaction."""
    dev = policy.device
    body = f"""  comment "overlayd: VXLAN ingress filter, see docs/backends.md"
  set {SOURCES} {{
    type ipv4_addr
{_elements(_sources(policy.sorted_sources()))}  }}
  set {PAIRS} {{
    type ether_addr . ipv4_addr
    flags interval
{_elements(_pairs(policy.sorted_pairs()))}  }}
  chain prerouting {{
    type filter hook prerouting priority raw; policy accept;
    udp dport {policy.port} ip saddr != @{SOURCES} fib daddr type {{ local, broadcast, multicast }} counter drop
    iifname "{dev}" meta protocol ip ether saddr . ip saddr != @{PAIRS} counter drop
    iifname "{dev}" meta protocol ip6 counter drop
  }}
"""  # noqa: E501 - nft rules read best on one line
    return replace_table(FAMILY, TABLE, body)


def delta_script(delta: IngressDelta) -> str:
    """One transaction applying ``delta``: deletions first (an interval set refuses an
    element overlapping one still present), then additions."""
    lines = []
    for verb, name, text in (
        ("delete", SOURCES, _sources(delta.del_sources)),
        ("delete", PAIRS, _pairs(delta.del_pairs)),
        ("add", SOURCES, _sources(delta.add_sources)),
        ("add", PAIRS, _pairs(delta.add_pairs)),
    ):
        if text:
            lines.append(f"{verb} element {FAMILY} {TABLE} {name} {{ {text} }}\n")
    return "".join(lines)


def _fingerprint(listing: str) -> str:
    """A terse listing with its counters' values left out (they change with traffic)."""
    return _COUNTERS.sub("counter", listing)


class IngressTable:
    """Keeps our table equal to the last policy given; blocking (runs ``nft``).

    ``run`` applies a script, ``read`` lists a table tersely (None: absent): nft.py's by
    default, fakes in tests.
    """

    def __init__(
        self,
        run: Callable[[str], None] = run_nft,
        read: Callable[[str, str], str | None] = list_table,
    ) -> None:
        self._run = run
        self._read = read
        self._applied: IngressPolicy | None = None  # None: the table's content is unknown
        self._fingerprint: str | None = None
        self._removed = False

    @property
    def known(self) -> bool:
        """Whether the table is known to hold the last policy applied."""
        return self._applied is not None

    def apply(
        self, policy: IngressPolicy, delta: IngressDelta, base: IngressPolicy | None
    ) -> str | None:
        """Make the table hold ``policy``; ``delta`` is the change from ``base``. Only when
        ``base`` is what the table holds is the delta applied; otherwise (first write, a
        failed or skipped update, other rules) the table is written whole. Returns what was
        done (None: nothing); ``KernelError`` if nft failed."""
        self._removed = False
        full = base is None or base is not self._applied or not policy.same_rules(base)
        if not full and not delta:
            self._applied = policy
            return None
        # unknown until nft has taken it: after a failure the next apply writes it whole
        applied, self._applied = self._applied, None
        if full:
            self._run(ingress_ruleset(policy))
            self._fingerprint = self._listing()
        else:
            self._run(delta_script(delta))
        self._applied = policy
        if full:
            moved = applied is not None and not policy.same_rules(applied)
            why = "rewritten (port or device changed)" if moved else "written"
            return f"{why}: {len(policy.sources)} sources, {len(policy.pairs)} inner prefixes"
        return delta.summary()

    def verify(self) -> bool:
        """Read the table back (structure only: cheap at any size); False, and the next
        ``apply`` writes it whole, if it is missing or not as we wrote it."""
        if self._applied is None:
            return False
        if self._listing() == self._fingerprint:
            return True
        self._applied = None
        return False

    def _listing(self) -> str | None:
        listing = self._read(FAMILY, TABLE)
        return None if listing is None else _fingerprint(listing)

    def remove(self) -> bool:
        """Delete the table (if present); True the first time after it was in use."""
        if self._removed:
            return False
        self._run(delete_table(FAMILY, TABLE))
        self._applied = self._fingerprint = None
        self._removed = True
        return True


class IngressFilter:
    """The daemon's side: plans on the event loop, runs nft on a worker thread."""

    def __init__(self, table: IngressTable | None = None, churn: Churn | None = None) -> None:
        """``churn``: the daemon's churn log, which summarises update lines under churn."""
        self.planner = IngressPlanner()
        self.table = table or IngressTable()
        self._churn = churn
        self._stale = False

    def mark_stale(self) -> None:
        """Read the table back at the next sync (the resync tick, or after a failure)."""
        self._stale = True

    async def sync(self, port: int, device: str, vxlan: VxlanPeers) -> None:
        """Bring the table in line with the VXLAN plan's peers; ``KernelError`` if nft
        fails (the next sync then writes the whole table)."""
        carried = carried_prefixes(vxlan.via_gateway, vxlan.leases) if vxlan.via_gateway else None
        base, out = self.planner.policy, None
        if vxlan.changed is not None:
            out = self.planner.update(
                port, device, vxlan.leases, vxlan.paths, vxlan.changed, carried, vxlan.site,
                vxlan.lingering,
            )  # fmt: skip
        if out is None:
            out = self.planner.plan(
                port, device, vxlan.leases, vxlan.paths, carried, vxlan.site, vxlan.lingering
            )
        policy, delta = out
        stale, self._stale = self._stale, False
        t0 = time.monotonic()
        try:
            if stale and self.table.known and not await asyncio.to_thread(self.table.verify):
                log.warning(
                    "ingress filter table %s %s missing or changed; rewriting", FAMILY, TABLE
                )
            done = await asyncio.to_thread(self.table.apply, policy, delta, base)
        except KernelError as exc:
            raise KernelError(f"VXLAN ingress filter: {exc}") from None
        if done is not None:
            ms = (time.monotonic() - t0) * 1000
            line = f"ingress filter for {len(policy.peers)} VXLAN peers: {done} in {ms:.1f} ms"
            if self._churn is None:
                log.info("%s", line)
            else:
                self._churn.note({"ingress passes": 1}, line)

    async def remove(self) -> None:
        """Remove the table: this node does not use VXLAN."""
        try:
            removed = await asyncio.to_thread(self.table.remove)
        except KernelError as exc:
            raise KernelError(f"VXLAN ingress filter: {exc}") from None
        if removed:
            log.info(
                "ingress filter: no VXLAN in this network; table %s %s removed if present",
                FAMILY,
                TABLE,
            )
