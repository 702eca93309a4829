"""The store: what the agent needs from etcd (``api``: Protocols and values), the etcd
adapter (``etcd``), an in-memory implementation with the same behaviour (``memory``), and
the lease keeper.

Imports values, planning (subnet allocation), runtime and disk; never the data plane,
the probe or the agent. Library errors become ``overlayd.values.errors`` types here.
"""
