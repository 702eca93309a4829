"""Kernel adapter for the VXLAN data plane.

* ``nlmsg``: netlink framing any family shares (header, flags, attributes, ACK/error/DONE);
* ``rtnl_messages``: rtnetlink constants and the route/neighbour/FDB messages overlayd owns;
* ``rtnl_encode`` / ``rtnl_decode``: those messages to and from bytes (pure);
* ``nlsock``: opening the raw rtnetlink sockets, and the request/dump channel over one;
* ``rtnl``: batched changes and dumps of overlayd's entries; ``monitor``: notifications;
* ``link_codec``: link and address messages to and from bytes (pure);
* ``link``: the overlay device and the underlay interface; ``ethtool``: checksum offload.
"""
