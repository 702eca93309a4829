"""Layer 1, values: what every other layer talks in -- frozen dataclasses and parsers.

Network config, lease records and their rules, kernel state entries, paths, gateway
state, WireGuard config and state, X25519 keys, our error types, quoting of outside
values, STUN Binding messages. Pure: imports nothing of overlayd outside this folder, and
no I/O, clock, randomness or logging (the import contracts in pyproject.toml check it).
"""
