"""Topic → handler: what a worker runs for each message.

A handler is a callable ``handler(payload, job)``. It returns normally when the job is done
and raises to say otherwise:

* :class:`PayloadError` — the payload has the wrong shape: dead-lettered at once (a retry
  would fail the same way);
* :class:`PermanentFailure` — it cannot succeed as it is: dead-lettered;
* :class:`RetryLater` — try again later (with ``retry_payload`` when part of the job is done);
* anything else — logged with its traceback and retried, then dead-lettered.

Built in: ``tuleap.tracker.artifact`` (notification mails) and ``tuitop.noop`` (does nothing;
for benchmarks and smoke tests). Other topics come from plugin modules named with
``--handlers MODULE``: each must define ``register(registry)``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tuitop.config import Settings
from tuitop.mail import MailTransport


class PayloadError(Exception):
    """The payload is not what the topic needs (says where and what was expected)."""


class PermanentFailure(Exception):
    """The job cannot succeed as it is; ``payload`` (if given) is what to keep for replay."""

    def __init__(self, reason: str, payload: Any = None) -> None:
        super().__init__(reason)
        self.payload = payload


class RetryLater(Exception):
    """The job should be tried again; ``payload`` (if given) replaces the original's."""

    def __init__(self, reason: str, payload: Any = None) -> None:
        super().__init__(reason)
        self.payload = payload


@dataclass
class Job:
    """What a handler gets besides the payload."""

    settings: Settings
    logger: logging.Logger
    worker_id: str
    mail: MailTransport
    topic: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[Any, Job], None]


class HandlerRegistry:
    """The handlers a worker knows, by topic."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, topic: str, handler: Handler) -> None:
        self._handlers[topic] = handler

    def get(self, topic: str) -> Handler | None:
        return self._handlers.get(topic)

    def topics(self) -> list[str]:
        return sorted(self._handlers)


def noop(payload: Any, job: Job) -> None:
    """``tuitop.noop``: does nothing, successfully."""


NOOP_TOPIC = "tuitop.noop"


def build_registry(plugin_modules: Iterable[str] = ()) -> HandlerRegistry:
    """The built-in handlers plus those of each plugin module (imported here)."""
    from tuitop.notification import TOPIC, handle_notification

    registry = HandlerRegistry()
    registry.register(TOPIC, handle_notification)
    registry.register(NOOP_TOPIC, noop)
    for name in plugin_modules:
        module = importlib.import_module(name)
        register = getattr(module, "register", None)
        if not callable(register):
            raise ImportError(f"handler module {name} has no register(registry) function")
        register(registry)
    return registry
