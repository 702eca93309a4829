"""What ``overlayctl graph`` draws: the observed network as Graphviz DOT text (pure).

Sites are clusters, each with an anchor point the edges of its peers end at; a node's
edge to a site says how it reaches that site's peers, coloured by the kind most of them
take (``KIND_COLOURS``), labelled with the counts and the median RTT. Broken paths are red:
a red edge to each peer a report names as unreachable, dashed red to a site none of whose
peers it reaches. Gateways are drawn bold with a double border; nodes without a fresh
report grey and dashed. Every name is quoted and escaped (``dot_id``): a name cannot
break out of its string, nor use DOT's label escapes.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterator, Mapping

from overlayd.planning.observed import OK, NodeState, ObservedNetwork, SiteState
from overlayd.values.report import (
    BROKEN_KINDS,
    GATEWAY,
    NO_PATH,
    PRIVATE,
    PUBLIC,
    PUNCHED,
    RELAY,
    UNVERIFIED,
)

BROKEN_COLOUR = "red"
KIND_COLOURS = {
    PRIVATE: "forestgreen",
    PUBLIC: "blue",
    PUNCHED: "purple",
    GATEWAY: "darkorange",
    RELAY: "goldenrod",
    UNVERIFIED: BROKEN_COLOUR,
    NO_PATH: BROKEN_COLOUR,
}
MAX_NAME = 64  # characters of a name drawn
NODES, SITES = "nodes", "sites"  # what the graph draws a box for


def _escaped(text: str) -> str:
    """``text`` for inside a DOT string: backslashes and quotes escaped (so neither a quote
    nor a label escape such as ``\\N`` survives), line breaks flattened."""
    return " ".join(text.splitlines()).replace("\\", "\\\\").replace('"', '\\"')


def dot_id(text: str) -> str:
    """``text`` cut to ``MAX_NAME`` characters as a quoted, escaped DOT ID."""
    return f'"{_escaped(text[:MAX_NAME])}"'


def _label(*lines: str) -> str:
    """A label of several lines (each escaped, joined by DOT's centred line break)."""
    return '"' + "\\n".join(_escaped(line) for line in lines) + '"'


def _anchor(site: str) -> str:
    return dot_id(f"site:{site}")  # ':' is in no node name (a DNS label): no clash


def graph_dot(net: ObservedNetwork, level: str = NODES) -> str:
    """The whole graph, one statement a line, in a stable order: every node (``NODES``),
    or one box per site with the paths between sites summed (``SITES``)."""
    return "\n".join(_lines(net, level)) + "\n"


def _lines(net: ObservedNetwork, level: str) -> Iterator[str]:
    legend = ", ".join(f"{k} {c}" for k, c in KIND_COLOURS.items() if c != BROKEN_COLOUR)
    title = f"overlayd: {len(net.nodes)} nodes, {len(net.sites)} sites"
    yield "digraph overlay {"
    yield (
        f'  graph [rankdir=LR, fontname="sans-serif", compound=true, '
        f"label={_label(title, f'edges: {legend}, broken red')}];"
    )
    yield '  node [shape=box, style=rounded, fontname="sans-serif"];'
    yield '  edge [fontname="sans-serif", fontsize=10];'
    if level == SITES:
        yield from _site_level(net)
    else:
        yield from _node_level(net)
    yield "}"


def _node_level(net: ObservedNetwork) -> Iterator[str]:
    by_name = {n.node: n for n in net.nodes}
    for i, cluster in enumerate(net.sites):
        yield from _cluster(i, cluster, by_name)
    drawn = {s.site for s in net.sites}
    for state in net.nodes:
        report = state.report
        if report is None:
            continue
        rtts = dict(report.site_rtts)
        for site, kinds in report.site_paths:
            if site in drawn:  # a site no lease names has no cluster to point at
                yield _edge(dot_id(report.node), _anchor(site), kinds, rtts.get(site))
    for pair in net.unreachable:
        yield (
            f"  {dot_id(pair.reporter)} -> {dot_id(pair.peer)} "
            f'[color={BROKEN_COLOUR}, penwidth=2, label="no path"];'
        )


def _site_level(net: ObservedNetwork) -> Iterator[str]:
    """A box per site; an edge per pair of sites with the counts of every report of the
    first site's nodes summed and the median of their median RTTs."""
    summed: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    medians: dict[tuple[str, str], list[float]] = defaultdict(list)
    for state in net.nodes:
        report = state.report
        if report is None:
            continue
        for peer_site, by_kind in report.site_paths:
            for kind, n in by_kind:
                summed[report.site, peer_site][kind] += n
        for peer_site, rtt in report.site_rtts:
            medians[report.site, peer_site].append(rtt)
    for site in net.sites:
        yield f"  {_anchor(site.site)} [label={_label(*_site_lines(site, net))}];"
    drawn = {s.site for s in net.sites}
    for (a, b), counts in sorted(summed.items()):
        if a in drawn and b in drawn:
            found = medians[a, b]
            median = round(statistics.median(found), 2) if found else None
            yield _edge(_anchor(a), _anchor(b), tuple(sorted(counts.items())), median)


def _site_lines(site: SiteState, net: ObservedNetwork) -> list[str]:
    members = [n for n in net.nodes if n.site == site.site]
    lines = [f"site {site.site} ({site.mode})", f"{len(members)} nodes"]
    if site.gateway:
        lines.append(f"gateway {site.gateway}")
    unfresh = sum(1 for n in members if n.health != OK)
    if unfresh:
        lines.append(f"{unfresh} without a fresh report")
    return lines


def _edge(src: str, dst: str, kinds: tuple[tuple[str, int], ...], rtt: float | None) -> str:
    """An edge for the peers behind ``dst`` (their counts by kind, median ``rtt``)."""
    reached = [(n, k) for k, n in kinds if k not in BROKEN_KINDS]
    broken = sum(n for k, n in kinds if k in BROKEN_KINDS)
    parts = [f"{n} {k}" for n, k in sorted(reached, reverse=True)]
    if broken:
        parts.append(f"{broken} unreachable")
    if rtt is not None:
        parts.append(f"{rtt:g} ms")
    if reached:
        colour, style = KIND_COLOURS.get(max(reached)[1], "black"), "solid"
    else:
        colour, style = BROKEN_COLOUR, "dashed"
    return f"  {src} -> {dst} [color={colour}, style={style}, label={_label(', '.join(parts))}];"


def _cluster(index: int, site: SiteState, nodes: Mapping[str, NodeState]) -> Iterator[str]:
    yield f"  subgraph cluster_{index} {{"
    yield f"    label={_label(f'site {site.site} ({site.mode})')};"
    yield f'    {_anchor(site.site)} [shape=point, width=0.08, label=""];'
    for name in site.nodes:
        state = nodes[name]
        lines = [name]
        attrs = []
        if state.gateway:
            lines.append("gateway")
            attrs += ["peripheries=2", 'style="rounded,bold"']
        if state.health != OK:
            lines.append(f"report {state.health}")
            attrs += ["color=grey50", "fontcolor=grey40", 'style="rounded,dashed"']
        yield f"    {dot_id(name)} [label={_label(*lines)}{''.join(', ' + a for a in attrs)}];"
    yield "  }"
