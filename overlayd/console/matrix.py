"""The connectivity matrices (pure): site x site, and node x node for small networks,
from the nodes' reports (overlayd/values/report.py).

A report says which peers its node cannot reach (the first ``MAX_UNREACHABLE`` by name, and
how many in all), how many peers of each site it reaches by which kind of path, and the
median RTT to each site: a cell is ``broken`` (red) when a node of the row reports a peer
of the column unreachable; ``ok`` when the row's reports list none of the column's nodes
and are complete, coloured by the kind most of those pairs take (``kind``) and labelled
with the median RTT; ``unknown`` (grey) when there is no fresh report or a report's list
was cut short; ``self`` on the node matrix's diagonal, ``none`` where a one-node site
meets itself. A node x node cell's kind is the one its row node uses most for the column
node's site (a report counts kinds per site, not per peer).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass

from overlayd.values.report import NodeReport

NODE_MATRIX_MAX = 40  # nodes up to which the node x node matrix is drawn
OK, BROKEN, UNKNOWN, SELF = "ok", "broken", "unknown", "self"
NO_PAIR = "none"  # a one-node site's own cell: no pair to report on


@dataclass(frozen=True)
class Cell:
    """One cell: its state (the colour) and its short text."""

    state: str
    text: str
    kind: str = ""  # the path kind most pairs of an ``ok`` cell take ("": not known)


@dataclass(frozen=True)
class Matrix:
    """Rows and columns share ``labels``; ``rows[i][j]`` is what row ``i`` sees of ``j``."""

    labels: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]

    def count(self, state: str) -> int:
        return sum(1 for row in self.rows for cell in row if cell.state == state)


def _complete(report: NodeReport) -> bool:
    return report.unreachable_total == len(report.unreachable)


def site_matrix(sites_of: dict[str, str], reports: dict[str, NodeReport]) -> Matrix:
    """``sites_of``: every node's site (from the leases); ``reports``: the fresh reports, by
    node. Row site S, column site T: what S's nodes report of T's. Linear in the nodes
    (each report lists at most ``MAX_UNREACHABLE`` peers), quadratic only in the sites."""
    members: dict[str, set[str]] = defaultdict(set)
    for node, site in sites_of.items():
        members[site].add(node)
    labels = tuple(sorted(members))
    rows = []
    for row in labels:
        reporters = [reports[n] for n in sorted(members[row]) if n in reports]
        broken: dict[str, int] = defaultdict(int)
        rtts: dict[str, list[float]] = defaultdict(list)
        kinds: dict[str, Counter[str]] = defaultdict(Counter)
        for report in reporters:
            for site, counts in report.site_paths:
                kinds[site].update(dict(counts))
            for peer in report.unreachable:
                if peer in sites_of:
                    broken[sites_of[peer]] += 1
            for site, rtt in report.site_rtts:
                rtts[site].append(rtt)
        complete = all(_complete(r) for r in reporters)
        names = {r.node for r in reporters}
        cells = []
        for col in labels:
            if not names:
                cells.append(Cell(UNKNOWN, "-"))
            elif names >= members[col] and len(members[col]) == 1:
                cells.append(Cell(NO_PAIR, ""))
            elif broken[col]:
                cells.append(Cell(BROKEN, f"{broken[col]} broken"))
            elif not complete:
                cells.append(Cell(UNKNOWN, "?"))
            else:
                text = f"{statistics.median(rtts[col]):.1f} ms" if rtts[col] else "ok"
                cells.append(Cell(OK, text, _most(kinds[col])))
        rows.append(tuple(cells))
    return Matrix(labels, tuple(rows))


def _most(counts: Counter[str]) -> str:
    """The kind with the most pairs (ties: the first by name); "" if none."""
    best = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return best[0][0] if best and best[0][1] > 0 else ""


def node_matrix(sites_of: dict[str, str], reports: dict[str, NodeReport]) -> Matrix | None:
    """Node x node for up to ``NODE_MATRIX_MAX`` nodes (None beyond): row node R, column
    node P: whether R reports P unreachable."""
    nodes = tuple(sorted(sites_of))
    if not nodes or len(nodes) > NODE_MATRIX_MAX:
        return None
    rows = []
    for row in nodes:
        report = reports.get(row)
        rows.append(tuple(_node_cell(row, col, sites_of[col], report) for col in nodes))
    return Matrix(nodes, tuple(rows))


def _node_cell(row: str, col: str, site: str, report: NodeReport | None) -> Cell:
    if row == col:
        return Cell(SELF, "")
    if report is None:
        return Cell(UNKNOWN, "-")
    if col in report.unreachable:
        return Cell(BROKEN, "✗")
    if not _complete(report):
        return Cell(UNKNOWN, "?")
    return Cell(OK, "✓", _most(Counter(dict(dict(report.site_paths).get(site, ())))))
