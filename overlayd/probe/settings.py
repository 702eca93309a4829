"""What the prober is told and what it counts: its settings, the peers to probe, its totals
(values; the prober itself is ``overlayd/probe/prober.py``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from overlayd.planning.path_choice import DEFAULT_HOLD
from overlayd.probe.wire import DEFAULT_PORT, DEFAULT_REPLAY_CAPACITY, DEFAULT_WINDOW
from overlayd.values.keys import PublicKey
from overlayd.values.lease import DEFAULT_SITE
from overlayd.values.wireguard import Endpoint

ANY = IPv4Address("0.0.0.0")


@dataclass(frozen=True)
class ProbeConfig:
    """Prober settings; the defaults meet issue 3's 3-second failover budget."""

    port: int = DEFAULT_PORT
    bind: IPv4Address = ANY
    fast_interval: float = 0.4  # the chosen path
    slow_interval: float = 5.0  # every other candidate
    # an idle peer's (overlayd/planning/probe_pace.py): no traffic, no recent path change
    idle_interval: float = 60.0  # its chosen path
    idle_slow_interval: float = 300.0  # its other candidates
    timeout: float = 0.6  # an unanswered probe counts as lost after this
    loss_threshold: int = 3  # consecutive losses that unverify a path
    jitter: float = 0.1  # intervals vary by +-10 %
    initial_spread: float = 1.0  # new paths get their first probe within this
    # timers are served on a grid of this many seconds, each tick's in one wake-up
    # (schedule.tick_at): at most 20 wake-ups a second whatever the peer count
    tick: float = 0.05
    stable_after: float = DEFAULT_HOLD  # wake the daemon when a recovered path settles
    rtt_alpha: float = 0.2  # EWMA weight of a new RTT sample
    window: float = DEFAULT_WINDOW  # accepted timestamp skew, seconds
    replay_capacity: int = DEFAULT_REPLAY_CAPACITY


@dataclass(frozen=True)
class PeerTarget:
    """A peer to probe: its key, candidate addresses and site (all from its lease), and
    during a punch attempt its NAT's probe endpoints, probed from ``punch_from`` on
    (``time.monotonic()``; before that only openers go out: overlayd/planning/punch.py)."""

    public_key: PublicKey
    candidates: tuple[IPv4Address, ...]
    site: str = DEFAULT_SITE
    port: int = DEFAULT_PORT  # the peer's probe port
    punched: tuple[Endpoint, ...] = ()
    punch_from: float = 0.0

    def probed(self) -> dict[IPv4Address, tuple[int, float]]:
        """Every address to probe: its port and the time before which it is not probed
        (a punched endpoint at a candidate's address is the candidate's)."""
        out = {e.address: (e.port, self.punch_from) for e in self.punched}
        out.update({a: (self.port, 0.0) for a in self.candidates})
        return out


@dataclass
class ProbeCounters:
    """Totals since start, for metrics and tests."""

    probes_sent: int = 0
    probes_received: int = 0
    replies_sent: int = 0
    replies_received: int = 0
    send_errors: int = 0
    losses: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
