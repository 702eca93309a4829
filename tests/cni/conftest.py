"""Root-marked CNI tests need root (namespaces, bridges, podman); skip them otherwise."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root")
    for item in items:
        if item.get_closest_marker("root") is not None:
            item.add_marker(skip)
