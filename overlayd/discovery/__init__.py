"""Address discovery without a public peer (docs/nat.md, "Address discovery").

* ``metadata``: asks the cloud's instance metadata service (AWS, GCP, Azure, Alibaba
  Cloud, Tencent Cloud) for this instance's public IPv4 address, once per process;
* ``stun``: asks STUN servers (RFC 5389) which address and port our datagrams leave by,
  from a socket the caller owns or from one of its own.

What either learns is a candidate: the agent publishes it only once a peer in another site
has verified it. The STUN message format is a pure value (``overlayd.values.stun``).
Imports values and runtime; never the store, the data plane, the probe or the agent.
"""
