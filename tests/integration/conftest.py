"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.daemons import init_network
from tests.lab.world import World, multicloud_world

WorldMaker = Callable[..., Iterator[World]]
"""``make_world(backend, **options)``: yields a multi-cloud world built with
``multicloud_world``'s ``options``, its network initialised on ``backend``; destroyed after."""


@pytest.fixture(scope="module")
def make_world(
    prefix_factory: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> WorldMaker:
    """A maker of worlds for a module's fixtures (see ``WorldMaker``)."""

    def make(backend: str, **options: Any) -> Iterator[World]:
        workdir = tmp_path_factory.mktemp("world")
        with multicloud_world(prefix_factory(), workdir=workdir, **options) as w:
            init_network(w, backend)
            yield w

    return make
