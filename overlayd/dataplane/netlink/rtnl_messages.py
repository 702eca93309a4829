"""What overlayd's rtnetlink messages say: the route/neighbour constants, and the routes,
neighbours and FDB entries as the kernel reports them, with the rule of which ones
overlayd owns.

Pure values, no sockets. The constants are those of rtnetlink(7) and the kernel headers
``linux/rtnetlink.h`` and ``linux/neighbour.h`` that overlayd uses; the netlink framing
they travel in is ``nlmsg``. ``rtnl_encode`` builds requests from these constants and
``rtnl_decode`` builds these messages from the kernel's bytes. Layouts:

* ``rtmsg``     family, dst_len, src_len, tos, table, protocol, scope, type u8; flags u32
* ``ndmsg``     family u8, pad u8, pad u16, ifindex s32, state u16, flags u8, type u8
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Address, IPv4Network

from overlayd.values.kernel_state import FdbEntry, MacAddress, NeighEntry, RouteEntry

# The route protocol number overlayd stamps on its routes (``ip route ... proto 157``).
# Values above RTPROT_STATIC (4) are free for routing daemons; 157 is not registered in
# iproute2's rt_protos. Everything overlayd reads back and deletes is filtered on it.
OVERLAYD_RTPROT = 157

# rtnetlink(7)
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
RTM_NEWNEIGH = 28
RTM_DELNEIGH = 29
RTM_GETNEIGH = 30

AF_INET = 2
AF_BRIDGE = 7

RT_TABLE_MAIN = 254
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_NOWHERE = 255
RTN_UNICAST = 1
RTNH_F_ONLINK = 4

RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_TABLE = 15

NDA_DST = 1
NDA_LLADDR = 2
NDA_CACHEINFO = 3  # struct nda_cacheinfo: confirmed, used, updated, refcnt (u32, in clock_t)
NDA_IFINDEX = 8

NUD_PERMANENT = 0x80
NTF_SELF = 0x02

RTMSG = struct.Struct("=BBBBBBBBI")
NDMSG = struct.Struct("=BBHiHBB")


class Action(Enum):
    """Whether a message announces (or dumps) an entry, or its removal."""

    NEW = "new"
    DEL = "del"


@dataclass(frozen=True, slots=True)
class RouteMessage:
    """An IPv4 route as the kernel reported it, with what is needed to decide ownership."""

    action: Action
    dst: IPv4Network
    gateway: IPv4Address | None
    oif: int
    table: int
    protocol: int
    scope: int
    type: int
    flags: int
    priority: int
    # Set on a NEW notification whose route took the place of another one (NLM_F_REPLACE):
    # the replaced route, possibly ours, went away without a DEL notification.
    replaced: bool = False

    @property
    def entry(self) -> RouteEntry | None:
        """The entry in overlayd's terms; None for a route without a gateway."""
        return None if self.gateway is None else RouteEntry(self.dst, self.gateway)

    def owned_on(self, ifindex: int) -> bool:
        """True if overlayd owns this route on device ``ifindex``."""
        return (
            self.protocol == OVERLAYD_RTPROT
            and self.oif == ifindex
            and self.table == RT_TABLE_MAIN
            and self.type == RTN_UNICAST
            and self.gateway is not None
        )


@dataclass(frozen=True, slots=True)
class NeighMessage:
    """An IPv4 neighbour (ARP) entry as the kernel reported it."""

    action: Action
    ifindex: int
    ip: IPv4Address
    lladdr: MacAddress | None
    state: int
    flags: int

    @property
    def entry(self) -> NeighEntry | None:
        """The entry in overlayd's terms; None while the kernel has no link address."""
        return None if self.lladdr is None else NeighEntry(self.ip, self.lladdr)

    def owned_on(self, ifindex: int) -> bool:
        """True if this is a permanent neighbour with a link address on ``ifindex``."""
        return (
            self.ifindex == ifindex and bool(self.state & NUD_PERMANENT) and self.lladdr is not None
        )


@dataclass(frozen=True, slots=True)
class FdbMessage:
    """A bridge FDB entry (family AF_BRIDGE) as the kernel reported it.

    ``dst`` is None if the entry has no IPv4 remote (local addresses of ordinary
    devices, IPv6 remotes). ``used``: seconds since the kernel last forwarded a frame
    through the entry (None if not reported); not part of the entry's identity.
    """

    action: Action
    ifindex: int
    mac: MacAddress
    dst: IPv4Address | None
    state: int
    flags: int
    used: float | None = field(default=None, compare=False)

    @property
    def entry(self) -> FdbEntry | None:
        """The entry in overlayd's terms; None without an IPv4 remote."""
        return None if self.dst is None else FdbEntry(self.mac, self.dst)

    def owned_on(self, ifindex: int) -> bool:
        """True if this is a permanent NTF_SELF entry with an IPv4 remote on ``ifindex``."""
        return (
            self.ifindex == ifindex
            and bool(self.flags & NTF_SELF)
            and bool(self.state & NUD_PERMANENT)
            and self.dst is not None
        )


EntryMessage = RouteMessage | NeighMessage | FdbMessage
