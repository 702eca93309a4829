"""What a node keeps in files: its state dir (node id, VTEP MAC, last subnet), its node
key, and the subnet file the CNI plugin reads.

Imports ``overlayd.values`` and ``overlayd.runtime`` only; never the store, the data plane
or the agent.
"""
