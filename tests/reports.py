"""Builders of node status reports (overlayd/values/report.py) for tests: the one place a
test spells out a ``NodeReport``, so a new field changes one file."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Network
from typing import Any

from overlayd.values.report import NodeReport


def node_report(node: str = "a1", **fields: Any) -> NodeReport:
    """A well-formed report of ``node`` (site ``default``, two private peers, no
    unreachable ones, written at UNIX time 1,700,000,000); ``fields`` override."""
    base = NodeReport(
        node=node,
        node_id="0123456789abcdef0123456789abcdef",
        site="default",
        subnet=IPv4Network("10.244.3.0/24"),
        role="mesh",
        versions=(("overlayd", "0.1.0"),),
        last_reconcile=1_699_999_999.5,
        paths=(("private", 2),),
        site_rtts=(("default", 0.4),),
        site_paths=(("default", (("private", 2),)),),
        unreachable=(),
        unreachable_total=0,
        written_at=1_700_000_000.0,
    )
    return replace(base, **fields)
