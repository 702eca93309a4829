"""The command lines: ``overlayd`` (``daemon_main``: the daemon's composition root, which
builds the real store, data plane, state dir, node key, host effects and clock and passes
them to ``overlayd.agent.daemon.Daemon``) and ``overlayctl`` (``ctl``: inspect and manage a
network from any host with etcd access). The top layer: imports any layer, imported by none.
"""
