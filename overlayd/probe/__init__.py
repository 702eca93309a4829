"""Authenticated underlay probes (docs/probe-protocol.md).

* ``wire``: the PROBE/REPLY datagram format and its checks (pure);
* ``prober``: the asyncio prober -- probes peers' candidate addresses, answers their
  probes, keeps per-path stats and reflexive observations.

The choice made from its results is planning (``overlayd.planning.path_choice``). Imports
values, planning and runtime; never the store, the data plane or the agent.
"""
