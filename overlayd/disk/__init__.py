"""What a node keeps in files: its state dir (node id, VTEP MAC, last subnet), its node
key, the subnet file the CNI plugin reads, and the hosts file of ``--hosts-file`` mode
(docs/dns.md); ``atomic`` writes a small file atomically for both.

Imports ``overlayd.values`` and ``overlayd.planning`` (the hosts-file block) only; never
the store, the data plane or the agent.
"""
