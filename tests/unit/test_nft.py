"""overlayd/dataplane/nft.py: scripts through libnftables in-process and through the nft
command give the same results (a real namespace: needs root)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.lab.netns import Namespace, create_namespace, tool

pytestmark = pytest.mark.root


@pytest.fixture
def netns(prefix: str) -> Iterator[Namespace]:
    yield create_namespace(f"{prefix}nft")


@pytest.mark.parametrize("path", ["library", "command"])
def test_write_read_back_refuse_and_delete(netns: Namespace, path: str) -> None:
    out = json.loads(netns.run(tool("nft_paths", path)).stdout)
    terse = out["terse"]
    assert "table inet ovtest" in terse and "set peers" in terse
    assert "192.0.2.7" not in terse and "192.0.2.8" not in terse  # terse: no elements
    assert out["after_delete"] is None  # a missing table reads back as None
    refused = out["refused"]
    assert refused.startswith("nft failed: ") and "Error:" in refused and "nosuchset" in refused
