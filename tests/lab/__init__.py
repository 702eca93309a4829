"""Test worlds of real network namespaces: hosts, LANs, NAT routers, an internet and etcd.

``netns`` has the namespace primitives, ``etcd`` runs a real etcd, ``world`` builds whole
topologies (a LAN, several clouds behind 1:1 NAT) and the traffic helpers tests use on them.
Everything is created under a caller-given name prefix and removed by ``netns.cleanup``.
"""
