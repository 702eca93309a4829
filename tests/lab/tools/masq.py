"""``masq apply NETWORK SUBNET`` / ``masq remove``: overlayd's masquerade rules, in this
namespace (``overlayd.dataplane.masq``; ``remove`` runs twice: removing what is gone is fine)."""

from __future__ import annotations

import sys
from ipaddress import IPv4Network

from overlayd.dataplane.masq import apply_masq, remove_masq


def main(argv: list[str]) -> int:
    if argv[0] == "apply":
        apply_masq(IPv4Network(argv[1]), IPv4Network(argv[2]))
    elif argv == ["remove"]:
        remove_masq()
        remove_masq()
    else:
        print(f"usage: masq apply NETWORK SUBNET | masq remove (not {argv})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
