"""The handlers a worker runs: the built-in ones, and those of plugin modules.

Built in: ``tuleap.tracker.artifact`` carrying ``mails`` (tuitop's notification mails,
:mod:`tuitop.notification`) and ``tuitop.noop`` (does nothing; for benchmarks and smoke
tests). Other topics come from plugin modules named with ``--handlers MODULE``: each must
define ``register(registry)`` (:class:`tuitop.handlers.HandlerRegistry`).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

from tuitop.handlers import Handler, HandlerRegistry, Job
from tuitop.notification import TOPIC, carries_mails, handle_notification


def noop(payload: Any, job: Job) -> None:
    """``tuitop.noop``: does nothing, successfully."""


NOOP_TOPIC = "tuitop.noop"


def build_registry(
    plugin_modules: Iterable[str] = (), fallback: Handler | None = None
) -> HandlerRegistry:
    """The built-in handlers plus those of each plugin module (imported here), and
    ``fallback`` for the rest."""
    registry = HandlerRegistry()
    registry.fallback = fallback
    registry.register(TOPIC, handle_notification, accepts=carries_mails)
    registry.register(NOOP_TOPIC, noop)
    for name in plugin_modules:
        module = importlib.import_module(name)
        register = getattr(module, "register", None)
        if not callable(register):
            raise ImportError(f"handler module {name} has no register(registry) function")
        register(registry)
    return registry
