"""Shared test setup: root-only tests are skipped without root; unique namespace prefixes.

Tests marked ``@pytest.mark.root`` need root (network namespaces, nftables, real etcd).
Namespace prefixes embed this session's pid (``ovw-<pid>-<n>-``), so a session removes the
leftovers of crashed sessions at its start without disturbing sessions still running.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # makes ``tests.lab`` importable however pytest is started
    sys.path.insert(0, str(REPO))

from tests.lab.etcd import EtcdServer  # noqa: E402
from tests.lab.netns import cleanup, cleanup_stale  # noqa: E402

LAB_BASE = "ovw-"
"""Prefix of every namespace made by this repo's own test worlds."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root")
    for item in items:
        if item.get_closest_marker("root") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def prefix_factory() -> Iterator[Callable[[], str]]:
    """Returns a new unique namespace prefix per call; removes every namespace of this
    session at its end (and those of dead sessions at its start)."""
    session = f"{LAB_BASE}{os.getpid()}-"
    cleanup_stale(LAB_BASE)
    counter = itertools.count(1)
    yield lambda: f"{session}{next(counter)}-"
    cleanup(session)


@pytest.fixture
def prefix(prefix_factory: Callable[[], str]) -> Iterator[str]:
    """A namespace prefix unique to this test; its namespaces are deleted after it."""
    value = prefix_factory()
    yield value
    cleanup(value)


@pytest.fixture
def etcd_server(tmp_path: Path) -> Iterator[EtcdServer]:
    """A healthy etcd on 127.0.0.1 (free ports, data in ``tmp_path``), stopped afterwards."""
    with EtcdServer(tmp_path / "etcd") as server:
        yield server
    shutil.rmtree(server.data_dir, ignore_errors=True)  # tens of MB of preallocated WAL
