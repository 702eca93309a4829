"""Authenticated underlay probes and per-peer path choice (issue 3).

* ``wire``: the PROBE/REPLY datagram format and its checks (pure).
* ``prober``: the asyncio prober -- probes peers' candidate addresses, answers their
  probes, keeps per-path stats and reflexive observations.
* ``choose``: the pure, deterministic path choice and reflexive-address confirmation.

See docs/probe-protocol.md.
"""

from __future__ import annotations

from overlayd.paths import PeerCandidates
from overlayd.probe.choose import (
    ChooseParams,
    Observation,
    PathStats,
    ReflexiveParams,
    choose_path,
    confirmed_public,
    probe_targets,
)
from overlayd.probe.prober import PeerTarget, ProbeConfig, ProbeCounters, Prober
from overlayd.probe.wire import DEFAULT_PORT, ProbeCodec, ProbeError, Reject

__all__ = [
    "DEFAULT_PORT",
    "ChooseParams",
    "Observation",
    "PathStats",
    "PeerCandidates",
    "PeerTarget",
    "ProbeCodec",
    "ProbeConfig",
    "ProbeCounters",
    "ProbeError",
    "Prober",
    "ReflexiveParams",
    "Reject",
    "choose_path",
    "confirmed_public",
    "probe_targets",
]
