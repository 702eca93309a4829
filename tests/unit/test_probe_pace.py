"""The probe pace policy (overlayd/planning/probe_pace.py): who is probed fast, who idly."""

from __future__ import annotations

from ipaddress import IPv4Address

from hypothesis import given
from hypothesis import strategies as st

from overlayd.planning.probe_pace import (
    PaceParams,
    Pacer,
    PeerActivity,
    PeerSample,
    fast_until,
    is_fast,
    observe,
    vouched,
)
from overlayd.probe.schedule import base_interval
from overlayd.probe.settings import ProbeConfig

P = PaceParams(traffic_hold=60.0, change_hold=30.0, min_bytes=512)
NOW = 1000.0


def idle_after(
    changed: dict[str, float], samples: dict[str, PeerSample], now: float
) -> frozenset[str]:
    """The peers a ``Pacer`` calls idle at ``now``, after ``changed`` and one sample."""
    pacer: Pacer[str] = Pacer(P)
    for peer, at in changed.items():
        pacer.changed(peer, at)
    pacer.sample(samples, now)
    pacer.repace(now)
    return frozenset(pacer.idle)


def test_no_peers_none_idle() -> None:
    assert observe({}, {}, NOW, P) == {}
    assert idle_after({}, {}, NOW) == frozenset()


def test_a_peer_turns_idle_once_its_change_is_old() -> None:
    assert idle_after({"a": NOW - P.change_hold}, {}, NOW) == {"a"}
    assert fast_until(None, None, P) is None  # never changed, no traffic: never fast


def test_vxlan_fdb_use_is_traffic_when_it_was_recent() -> None:
    seen = observe({}, {"a": PeerSample(idle_for=2.0), "b": PeerSample(idle_for=300.0)}, NOW, P)
    assert seen["a"].last_traffic == NOW - 2.0
    old = NOW - P.change_hold
    samples = {"a": PeerSample(idle_for=2.0), "b": PeerSample(idle_for=300.0)}
    assert idle_after({"a": old, "b": old}, samples, NOW) == {"b"}
    # a peer stays fast for traffic_hold after its last frame, then turns idle
    assert not is_fast(seen["a"], None, NOW - 2.0 + P.traffic_hold, P)
    assert is_fast(seen["a"], None, NOW - 2.0 + P.traffic_hold - 0.1, P)


def test_an_older_fdb_reading_never_moves_traffic_back() -> None:
    first = observe({}, {"a": PeerSample(idle_for=1.0)}, NOW, P)
    assert observe(first, {"a": PeerSample(idle_for=400.0)}, NOW + 5, P) == {}  # no news


def test_an_unchanged_reading_is_no_news() -> None:
    first = observe({}, {"a": PeerSample(idle_for=100.0)}, NOW, P)
    assert observe(first, {"a": PeerSample(idle_for=105.0)}, NOW + 5, P) == {}
    assert observe(first, {"a": PeerSample(idle_for=1.0)}, NOW + 5, P) == {
        "a": PeerActivity(NOW + 4.0)
    }


def test_negative_age_counts_as_now() -> None:
    seen = observe({}, {"a": PeerSample(idle_for=-5.0)}, NOW, P)
    assert seen["a"].last_traffic == NOW


def test_wireguard_counters_growing_are_traffic() -> None:
    first = observe({}, {"a": PeerSample(wg_bytes=10_000)}, NOW, P)
    assert first["a"].last_traffic is None  # one reading says nothing yet
    second = observe(first, {"a": PeerSample(wg_bytes=10_000 + 4096)}, NOW + 5, P)
    assert second["a"] == PeerActivity(NOW + 5, 14_096)


def test_keepalives_and_handshakes_are_not_traffic() -> None:
    first = observe({}, {"a": PeerSample(wg_bytes=10_000)}, NOW, P)
    # a keepalive (32 bytes) and a handshake (148 + 92) in one sample
    second = observe(first, {"a": PeerSample(wg_bytes=10_000 + 32 + 240)}, NOW + 5, P)
    assert second["a"].last_traffic is None
    old = NOW - P.change_hold
    assert idle_after({"a": old}, {"a": PeerSample(wg_bytes=10_000 + 32 + 240)}, NOW) == {"a"}


def test_a_counter_that_fell_is_a_new_device_not_traffic() -> None:
    first = observe({}, {"a": PeerSample(wg_bytes=1_000_000)}, NOW, P)
    second = observe(first, {"a": PeerSample(wg_bytes=100)}, NOW + 5, P)
    assert second["a"] == PeerActivity(None, 100)
    third = observe(second, {"a": PeerSample(wg_bytes=100 + 5000)}, NOW + 10, P)
    assert third["a"].last_traffic == NOW + 10


def test_peers_missing_from_a_sample_keep_what_they_had() -> None:
    pacer: Pacer[str] = Pacer(P)
    pacer.changed("a", NOW - P.change_hold)
    pacer.sample({"a": PeerSample(idle_for=0.0)}, NOW)
    assert pacer.repace(NOW) == (frozenset(), frozenset())  # fast, as it started
    pacer.sample({}, NOW + 5)
    assert pacer.repace(NOW + 5) == (frozenset(), frozenset())  # still fast: no news
    assert pacer.repace(NOW + P.traffic_hold) == (frozenset({"a"}), frozenset())
    assert pacer.idle == {"a"}


def test_a_recent_path_change_is_fast_without_traffic() -> None:
    changed = {"a": NOW - 10.0, "b": NOW - P.change_hold}
    assert idle_after(changed, {}, NOW) == {"b"}


def test_an_idle_peer_turns_fast_with_traffic_or_a_change_and_is_reported_once() -> None:
    pacer: Pacer[str] = Pacer(P)
    for peer in "abc":
        pacer.changed(peer, NOW)
    assert pacer.repace(NOW + P.change_hold) == (frozenset("abc"), frozenset())
    later = NOW + P.change_hold + 5
    pacer.sample({"a": PeerSample(idle_for=0.0)}, later)
    pacer.changed("b", later)
    assert pacer.repace(later) == (frozenset(), frozenset("ab"))
    assert pacer.repace(later + 1) == (frozenset(), frozenset())  # nothing new
    assert pacer.idle == {"c"}


def test_a_forgotten_peer_leaves_no_trace() -> None:
    pacer: Pacer[str] = Pacer(P)
    pacer.changed("a", NOW)
    pacer.sample({"a": PeerSample(idle_for=0.0)}, NOW)
    pacer.repace(NOW + P.traffic_hold)
    pacer.forget("a")
    assert pacer.idle == set()
    assert pacer.repace(NOW + 2 * P.traffic_hold) == (frozenset(), frozenset())
    # should it come back, it is a new peer: its first reading is not compared with the old
    pacer.sample({"a": PeerSample(wg_bytes=10_000, wg_rx=10_000)}, NOW)
    assert vouched({}, {"a": PeerSample(wg_bytes=1, wg_rx=1)}, P) == {}


@given(
    st.dictionaries(
        st.integers(0, 50),
        st.tuples(
            st.none() | st.floats(-10, 1e6, allow_nan=False),
            st.none() | st.integers(0, 2**40),
        ),
        max_size=30,
    ),
    st.dictionaries(st.integers(0, 50), st.floats(0, 2000, allow_nan=False), max_size=30),
)
def test_the_pacer_agrees_with_is_fast(
    samples: dict[int, tuple[float | None, int | None]], changed: dict[int, float]
) -> None:
    """Whatever the samples and changes, a ``Pacer`` calls idle exactly the peers that
    ``is_fast`` says are not fast, of those it was ever told to hold fast (the path keeper
    tells it of every peer as it appears)."""
    pacer: Pacer[int] = Pacer(P)
    for p, at in changed.items():
        pacer.changed(p, at)
    sampled = {p: PeerSample(*s) for p, s in samples.items()}
    seen = observe({}, sampled, NOW, P)
    pacer.sample(sampled, NOW)
    pacer.repace(NOW)
    for p in set(changed) | set(samples):
        fast = is_fast(seen.get(p), changed.get(p), NOW, P)
        held = fast_until(seen.get(p), changed.get(p), P) is not None
        assert (p in pacer.idle) == (held and not fast)
    for p, (idle_for, _) in samples.items():
        if idle_for is not None and idle_for < P.traffic_hold:
            assert p not in pacer.idle


def test_intervals_of_the_four_kinds_of_path() -> None:
    c = ProbeConfig(fast_interval=0.4, slow_interval=5, idle_interval=30, idle_slow_interval=120)
    assert base_interval(c, chosen=True, idle=False) == 0.4
    assert base_interval(c, chosen=False, idle=False) == 5
    assert base_interval(c, chosen=True, idle=True) == 30
    assert base_interval(c, chosen=False, idle=True) == 120


ENDPOINT = IPv4Address("198.51.100.7")


def _wg(rx: int, age: float | None = 10.0, endpoint: IPv4Address | None = ENDPOINT) -> PeerSample:
    return PeerSample(wg_bytes=rx, wg_rx=rx, wg_endpoint=endpoint, wg_handshake_age=age)


def test_a_live_wireguard_session_vouches_for_its_endpoint() -> None:
    first = observe({}, {"a": _wg(1000)}, NOW, P)
    assert vouched({}, {"a": _wg(1000)}, P) == {}  # nothing to compare with yet
    assert vouched(first, {"a": _wg(1032)}, P) == {"a": ENDPOINT}  # a keepalive arrived


def test_no_vouch_without_rx_a_fresh_session_or_an_endpoint() -> None:
    first = observe({}, {"a": _wg(1000)}, NOW, P)
    assert vouched(first, {"a": _wg(1000)}, P) == {}  # nothing arrived
    assert vouched(first, {"a": _wg(1032, age=P.handshake_fresh)}, P) == {}  # stale session
    assert vouched(first, {"a": _wg(1032, age=None)}, P) == {}  # never shook hands
    assert vouched(first, {"a": _wg(1032, age=-1.0)}, P) == {}  # a handshake in the future
    assert vouched(first, {"a": _wg(1032, endpoint=None)}, P) == {}
    assert vouched(first, {"b": _wg(5000)}, P) == {}  # another peer's first sample
