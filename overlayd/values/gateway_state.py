"""Gateway election and health, as stored under ``<prefix>/gw/`` (pure values).

``gw/site/<site>``               the site's gateway claim, bound to its holder's short lease
``gw/health/<site>/<reporter>``  a site member's report that the gateway stopped forwarding
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from overlayd.values.text import quote


@dataclass(frozen=True)
class GatewayClaim:
    """Who is a site's gateway."""

    site: str
    node: str
    node_id: str
    subnet: IPv4Network

    def to_json(self) -> str:
        return json.dumps(
            {
                "Site": self.site,
                "Node": self.node,
                "NodeID": self.node_id,
                "Subnet": str(self.subnet),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, value: bytes) -> GatewayClaim:
        raw = json.loads(value)
        return cls(
            str(raw["Site"]), str(raw["Node"]), str(raw["NodeID"]), IPv4Network(raw["Subnet"])
        )


@dataclass(frozen=True)
class HealthReport:
    """A member's view: the site's gateway (by node id) does (not) forward its traffic."""

    site: str
    reporter_id: str
    reporter: str
    gateway_id: str
    healthy: bool = False

    def to_json(self) -> str:
        return json.dumps(
            {"Site": self.site, "ReporterID": self.reporter_id, "Reporter": self.reporter,
             "GatewayID": self.gateway_id, "Healthy": self.healthy},
            sort_keys=True,
        )  # fmt: skip

    @classmethod
    def from_json(cls, value: bytes) -> HealthReport:
        raw = json.loads(value)
        return cls(
            str(raw["Site"]),
            str(raw["ReporterID"]),
            str(raw["Reporter"]),
            str(raw["GatewayID"]),
            bool(raw.get("Healthy", False)),
        )


@dataclass
class GatewayState:
    """Every site's gateway claim and the health reports about it."""

    claims: dict[str, GatewayClaim] = field(default_factory=dict)
    reports: dict[tuple[str, str], HealthReport] = field(default_factory=dict)
    revision: int = 0

    def absorb(self, name: str, value: bytes | None) -> str | None:
        """Apply one key (relative to ``gw/``) and its value (None: deleted).

        A malformed value is treated as absent: it elects and blames no one. Returns why
        it was malformed (for the store to log), None when it was not.
        """
        parts = name.split("/")
        try:
            if parts[0] == "site" and len(parts) == 2:
                self.claims.pop(parts[1], None)
                if value:
                    self.claims[parts[1]] = GatewayClaim.from_json(value)
            elif parts[0] == "health" and len(parts) == 3:
                self.reports.pop((parts[1], parts[2]), None)
                if value:
                    self.reports[(parts[1], parts[2])] = HealthReport.from_json(value)
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            return f"ignoring malformed gateway record {quote(name)}: {quote(str(exc))}"
        return None

    def blame(self, site: str, gateway_id: str) -> list[HealthReport]:
        """The reports that ``site``'s gateway ``gateway_id`` does not forward."""
        return [
            r for (s, _), r in self.reports.items()
            if s == site and r.gateway_id == gateway_id and not r.healthy
        ]  # fmt: skip
