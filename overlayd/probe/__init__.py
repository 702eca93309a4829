"""Authenticated underlay probes (docs/probe-protocol.md).

* ``wire``: the PROBE/REPLY datagram format and its checks (pure);
* ``prober``: the asyncio prober -- probes peers' candidate addresses and answers their
  probes;
* ``schedule``: its per-path stats and the timers of when each path is probed (pure);
* ``observed``: the reflexive addresses peers saw us at, bounded per peer (pure).

The choice made from its results is planning (``overlayd.planning.path_choice``). Imports
values, planning and runtime; never the store, the data plane or the agent.
"""
