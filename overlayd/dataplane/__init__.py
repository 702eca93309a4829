"""The data plane: the Protocol the agent programs (``api``), the netlink plumbing
(``netlink``), the kernel mirror, nftables (ingress filter, masquerade) and the WireGuard
drivers (``wireguard``).

Imports values, planning (the ingress policy it writes) and runtime; never the store, the
probe or the agent. Kernel and driver errors become ``overlayd.values.errors`` types here.
"""
