"""The agent: what the ``overlayd`` daemon runs.

``daemon`` starts the parts and runs the one reconcile loop; its parts: the lease-event
fold (``lease_fold``), device set-up (``devices``), the reconcile pass applying
``overlayd.planning.node.plan_node`` (``reconcile``), our lease's republishing
(``lease_publish``), the status documents (``status_docs``), the flags (``options``).
Control tasks beside it: path keeping (``path_keeper``, behind ``path_api``'s Protocol),
gateway election (``election``), key rotation (``rotation``); the status port
(``status``, ``status_guard``, ``status_listen``), sd_notify, churn log lines, host
effects (``host``). Its collaborators
are built by the composition root, ``overlayd/cli/daemon_main.py``. May import every layer
below; only the CLI imports it.
"""
