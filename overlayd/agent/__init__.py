"""The agent: what the ``overlayd`` daemon runs.

``daemon`` is the reconcile loop applying ``overlayd.planning.node.plan_node``; control
tasks beside it: path keeping (``path_keeper``), gateway election (``election``), key
rotation (``rotation``); the status port (``status``, ``status_guard``,
``status_listen``), sd_notify, churn log lines, host effects (``host``). Its collaborators
are built by the composition root, ``overlayd/cli/daemon_main.py``. May import every layer
below; only the CLI imports it.
"""
