"""Layer 2, planning: leases + this node + probe results -> the desired state (pure).

Subnet allocation, the VXLAN, WireGuard and gateway planners, the one entry point
``node.plan_node`` (the daemon applies it, ``overlayctl plan`` prints it), path choice,
the VXLAN ingress policy. Deterministic and sorted; imports only ``overlayd.values``, and
no I/O, clock, randomness or logging (the import contracts in pyproject.toml check it).
"""
