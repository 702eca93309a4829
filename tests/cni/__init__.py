"""Tests of the overlay CNI plugin (spec level, namespaces with real plugins, podman)."""
