"""The subnet file: rendering, parsing and atomic writes."""

from __future__ import annotations

import os
import threading
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from overlayd.disk.subnet_file import SubnetFile, read_subnet_file, write_subnet_file
from overlayd.values.errors import ConfigError


def sample(n: int = 3, mtu: int = 1450, masq: bool = True) -> SubnetFile:
    return SubnetFile(
        network=IPv4Network("10.244.0.0/16"),
        subnet=IPv4Interface(f"10.244.{n}.1/24"),
        mtu=mtu,
        ipmasq=masq,
    )


def test_render_format() -> None:
    assert sample().render() == (
        "OVERLAY_NETWORK=10.244.0.0/16\n"
        "OVERLAY_SUBNET=10.244.3.1/24\n"
        "OVERLAY_MTU=1450\n"
        "OVERLAY_IPMASQ=true\n"
    )
    assert "OVERLAY_IPMASQ=false\n" in sample(masq=False).render()


@pytest.mark.parametrize("masq", [True, False])
def test_render_parse_round_trip(masq: bool) -> None:
    sf = sample(n=200, mtu=8951, masq=masq)
    assert SubnetFile.parse(sf.render()) == sf


def test_parse_tolerates_comments_blank_lines_spaces_and_order() -> None:
    text = (
        "# written by overlayd\n\n"
        "OVERLAY_MTU = 1400\n"
        "  OVERLAY_SUBNET=10.244.9.1/24  \n"
        "OVERLAY_IPMASQ=TRUE\n"
        "OVERLAY_NETWORK=10.244.0.0/16\n"
        "OTHER_KEY=ignored\n"
    )
    sf = SubnetFile.parse(text)
    assert sf == SubnetFile(
        IPv4Network("10.244.0.0/16"), IPv4Interface("10.244.9.1/24"), 1400, True
    )


def test_ipmasq_optional_defaults_false() -> None:
    sf = SubnetFile.parse(
        "OVERLAY_NETWORK=10.244.0.0/16\nOVERLAY_SUBNET=10.244.9.1/24\nOVERLAY_MTU=1400\n"
    )
    assert sf.ipmasq is False


@pytest.mark.parametrize("key", ["OVERLAY_NETWORK", "OVERLAY_SUBNET", "OVERLAY_MTU"])
def test_missing_key(key: str) -> None:
    text = "".join(
        line + "\n" for line in sample().render().splitlines() if not line.startswith(key)
    )
    with pytest.raises(ConfigError, match=f"missing {key}"):
        SubnetFile.parse(text)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("OVERLAY_NETWORK 10.244.0.0/16\n", "not KEY=value"),
        (
            "OVERLAY_NETWORK=10.244.0.0/16\nOVERLAY_SUBNET=10.244.9.1/24\nOVERLAY_MTU=big\n",
            "subnet file",
        ),
        (
            "OVERLAY_NETWORK=10.244.0.1/16\nOVERLAY_SUBNET=10.244.9.1/24\nOVERLAY_MTU=1400\n",
            "subnet file",
        ),
        ("", "missing OVERLAY_NETWORK"),
    ],
)
def test_malformed(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SubnetFile.parse(text)


def test_write_and_read(tmp_path: Path) -> None:
    path = tmp_path / "run" / "overlayd" / "subnet.env"  # parents created
    write_subnet_file(path, sample())
    assert read_subnet_file(path) == sample()
    assert path.read_text() == sample().render()
    assert (path.stat().st_mode & 0o777) == 0o644
    write_subnet_file(path, sample(n=7, masq=False))
    assert read_subnet_file(path) == sample(n=7, masq=False)
    assert os.listdir(path.parent) == ["subnet.env"]


def test_read_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_subnet_file(tmp_path / "nope.env")


def test_atomic_write_readers_never_see_partial_content(tmp_path: Path) -> None:
    path = tmp_path / "subnet.env"
    contents = [sample(n=n, mtu=1000 + n, masq=bool(n % 2)) for n in range(1, 60)]
    valid = {c.render() for c in contents}
    write_subnet_file(path, contents[0])
    stop = threading.Event()
    seen: list[str] = []
    bad: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            text = path.read_text()  # never FileNotFoundError: rename replaces in place
            seen.append(text)
            if text not in valid:
                bad.append(text)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(5):
            for c in contents:
                write_subnet_file(path, c)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not bad
    assert len(seen) > 10
    assert read_subnet_file(path) == contents[-1]
    # no temp files left behind
    assert sorted(os.listdir(tmp_path)) == ["subnet.env"]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "subnet.env"
    write_subnet_file(path, sample())

    class Boom(SubnetFile):
        def render(self) -> str:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_subnet_file(path, Boom(**sample(n=9).__dict__))
    assert read_subnet_file(path) == sample()
    assert os.listdir(tmp_path) == ["subnet.env"]
