"""The ``overlay`` CNI plugin: attaches containers to this node's overlay subnet.

The plugin is thin, like flannel's: it reads the subnet file overlayd writes, builds a
``bridge`` + ``host-local`` delegate configuration from it, caches that configuration per
attachment and runs the stock plugin. A runtime executes it once per container and
command, so this package imports only the standard library and ``overlayd.disk.subnet_file``.
"""
