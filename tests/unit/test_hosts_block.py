"""``--hosts-file`` mode: our marked block, and nothing else, in a hosts file
(overlayd/planning/hosts_block.py, overlayd/disk/hosts_file.py)."""

from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path

from overlayd.disk.hosts_file import remove_hosts_block, update_hosts_file
from overlayd.planning.hosts_block import with_block, without_block
from overlayd.planning.names import Zone
from overlayd.planning.zone_builder import build_zone
from overlayd.values.lease import LeaseRecord
from tests.builders import node_lease

ZONE = "overlay.internal"
THEIRS = "127.0.0.1\tlocalhost\n# a comment\n10.0.0.5 db.corp\n"


def zone_of(*records: LeaseRecord) -> Zone:
    leases = {r.subnet: r for r in records}
    return build_zone(ZONE, IPv4Network("10.244.0.0/16"), "node1", leases, {})


def test_the_block_goes_after_what_is_there_and_replaces_itself() -> None:
    one = zone_of(node_lease(1, "192.0.2.1"))
    text = with_block(THEIRS, one)
    assert text.startswith(THEIRS)
    assert text.endswith(
        "# BEGIN overlayd overlay.internal\n10.244.1.0\tnode1.default.overlay.internal\n"
        "10.244.1.0\tnode1.overlay.internal\n# END overlayd overlay.internal\n"
    )
    two = zone_of(node_lease(1, "192.0.2.1"), node_lease(2, "192.0.2.2"))
    again = with_block(text + "# after\n", two)
    assert again.count("# BEGIN overlayd") == 1 and "node2.overlay.internal" in again
    assert again.startswith(THEIRS) and again.endswith("# after\n")
    assert without_block(again, ZONE) == THEIRS + "# after\n"
    assert without_block(THEIRS, ZONE) is None


def test_an_empty_zone_leaves_an_empty_block_and_an_unterminated_one_is_replaced() -> None:
    empty = with_block("", zone_of())
    assert empty == "# BEGIN overlayd overlay.internal\n# END overlayd overlay.internal\n"
    broken = THEIRS + "# BEGIN overlayd overlay.internal\n10.9.9.9 stale\n"
    fixed = with_block(broken, zone_of(node_lease(1, "192.0.2.1")))
    assert "stale" not in fixed and fixed.startswith(THEIRS)


def test_the_file_is_rewritten_only_when_names_change_and_keeps_its_mode(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(THEIRS)
    hosts.chmod(0o640)
    zone = zone_of(node_lease(1, "192.0.2.1"))
    assert update_hosts_file(hosts, zone) is True
    assert update_hosts_file(hosts, zone) is False
    assert hosts.stat().st_mode & 0o777 == 0o640
    assert "node1.overlay.internal" in hosts.read_text()
    assert remove_hosts_block(hosts, ZONE) is True
    assert hosts.read_text() == THEIRS
    assert remove_hosts_block(hosts, ZONE) is False
    missing = tmp_path / "new" / "hosts"
    assert update_hosts_file(missing, zone) is True and missing.exists()
