"""The DNS responder every daemon runs for the network's zone (docs/dns.md).

* ``wire``: query bytes to response bytes with dnspython, from the ``Zone`` that
  ``overlayd.planning.names`` builds (bounded cache, no exceptions on bad input);
* ``server``: the UDP and TCP sockets, with the TCP limits.

Imports values, planning and runtime; never the store, the data plane, the probe or the
agent, which decides what is served and where.
"""
