"""The store: what the agent needs from etcd (``api``: Protocols and values), the Store
methods once for both implementations (``keyed`` over a raw key-value service, whose keys
``keyspace`` reads), the etcd adapter (``etcd``, its watch stream ``etcd_watch``, endpoints
and TLS ``etcd_tls``), an in-memory implementation with the same behaviour (``memory`` over
``memory_kv``), and the lease keeper.

Imports values, planning (subnet allocation), runtime and disk; never the data plane,
the probe or the agent. Library errors become ``overlayd.values.errors`` types here.
"""
