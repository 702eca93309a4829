"""``overlayctl node rotate-key`` against the in-memory store: no such node, one and many
nodes, malformed and keyless leases, ``--no-wait``, a daemon that serves the request and
one that does not within ``--timeout``."""

from __future__ import annotations

import dataclasses

import pytest

from overlayd.agent.rotation import VERB
from overlayd.store.memory import MemStore
from overlayd.values.lease import LeaseRecord
from tests.builders import record, wg_key
from tests.component.ctl import Ctl, sync

NEW_KEY = wg_key(99)


def keyed(subnet: str, node: str, n: int) -> LeaseRecord:
    return record(subnet, node, f"i{node}", n, public_key=wg_key(n))


class ServedAtOnce(MemStore):
    """A store whose node daemon serves a request as soon as it is written: it republishes
    its lease with ``NEW_KEY``, then deletes the request (as ``KeyRotation`` does)."""

    served: tuple[LeaseRecord, int] | None = None  # the lease to republish and its etcd lease

    async def put_control(self, node: str, verb: str, value: str) -> None:
        await super().put_control(node, verb, value)
        assert self.served is not None
        old, lease_id = self.served
        await self.replace_lease(old, dataclasses.replace(old, public_key=NEW_KEY), lease_id)
        done = await self.get_control(node, verb)
        assert done is not None
        assert await self.delete_control(node, verb, done.mod_revision)


def test_no_lease_requests_nothing() -> None:
    ctl = Ctl()
    result = ctl("node", "rotate-key", "a", code=1)
    assert result.stderr.splitlines() == [
        "error: no lease for node 'a'",
        "hint: see 'overlayctl leases list'",
    ]
    assert sync(ctl.store.get_control("a", VERB)) is None


def test_no_wait_writes_the_request_for_that_node_only() -> None:
    ctl = Ctl()
    for n, name in enumerate(["a", "b", "c"], start=1):
        ctl.lease(keyed(f"10.244.{n}.0/24", name, n))
    out = ctl("node", "rotate-key", "b", "--no-wait").stdout
    assert out == f"node b: key rotation requested (public key now {wg_key(2)})\n"
    assert sync(ctl.store.get_control("b", VERB)) is not None
    assert [sync(ctl.store.get_control(n, VERB)) for n in ("a", "c")] == [None, None]


def test_waits_until_the_daemon_published_its_new_key() -> None:
    store = ServedAtOnce()
    ctl = Ctl(store)
    mine = keyed("10.244.1.0/24", "a", 1)
    store.served = (mine, ctl.lease(mine))
    out = ctl("node", "rotate-key", "a").stdout
    assert out == f"node a: new public key {NEW_KEY} (was {wg_key(1)})\n"


def test_not_served_within_the_timeout_is_exit_1_and_the_request_stays() -> None:
    ctl = Ctl()
    ctl.lease(keyed("10.244.1.0/24", "a", 1))
    result = ctl("node", "rotate-key", "a", "--timeout", "0.1", code=1)
    assert result.stderr.startswith("error: node 'a' did not rotate its key within 0.1s")
    assert "hint: is the node's daemon running?" in result.stderr
    assert sync(ctl.store.get_control("a", VERB)) is not None


def test_a_node_without_a_key_or_with_a_malformed_lease() -> None:
    ctl = Ctl()
    ctl.lease(record("10.244.1.0/24", "flannel", "if", 1))  # no PublicKey
    ctl.store.put_raw(f"{ctl.store.prefix}/subnets/10.244.5.0-24", "{garbage")
    keyless = ctl("node", "rotate-key", "flannel", code=1)
    assert "publishes no PublicKey" in keyless.stderr
    # a malformed lease names no node: nothing to find by its subnet either
    assert "no lease for node" in ctl("node", "rotate-key", "10.244.5.0/24", code=1).stderr
    assert sync(ctl.store.get_control("flannel", VERB)) is None


@pytest.mark.parametrize("timeout", ["0", "-1", "soon"])
def test_a_bad_timeout_is_a_usage_error(timeout: str) -> None:
    result = Ctl()("node", "rotate-key", "a", "--timeout", timeout, code=2)
    assert "--timeout" in result.stderr
