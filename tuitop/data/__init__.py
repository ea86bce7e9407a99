"""Files tuitop ships for the system around it, read with :mod:`importlib.resources`:
``tuitop.service`` (systemd's unit, written out by ``tuitop install-unit``) and
``tuitop.logrotate`` (logrotate's rules for the worker_log)."""
