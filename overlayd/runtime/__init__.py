"""Shared machinery of every adapter and the agent: logging helpers and the retry policy.

Knows no layer above it: imports only ``overlayd.values``.
"""
