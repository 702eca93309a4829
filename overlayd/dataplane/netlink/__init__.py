"""Kernel adapter for the VXLAN data plane.

``link`` manages the overlay device with pyroute2; ``rtnl`` programs, reads back and
watches overlayd's routes, neighbours and FDB entries with the small ``codec``.
"""
