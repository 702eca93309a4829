"""The command lines: ``overlayd`` (``daemon_main``: the daemon's composition root, which
builds the real store, data plane, state dir, node key and path keeper and passes them to
``overlayd.agent.daemon.Daemon``, whose host effects and clock default to the real ones)
and ``overlayctl`` (``ctl``: inspect and manage a network from any host with etcd access).
The top layer: imports any layer, imported by none.
"""
