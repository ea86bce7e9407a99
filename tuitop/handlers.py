"""Topic → handler: what a worker runs for each message.

A handler is a callable ``handler(payload, job)``. It returns normally when the job is done
and raises to say otherwise:

* :class:`PayloadError` — the payload has the wrong shape: dead-lettered at once (a retry
  would fail the same way);
* :class:`PermanentFailure` — it cannot succeed as it is: dead-lettered;
* :class:`RetryLater` — try again later (with ``payload`` when part of the job is done);
* anything else — logged with its traceback and retried, then dead-lettered.

This module is the contract between a worker and the handlers, and imports none of them:
the built-in ones and the plugins' (``--handlers MODULE``, each defining
``register(registry)``) are put together by :mod:`tuitop.registry`. A message no handler
takes goes to the registry's fallback when it has one: Tuleap's task process
(:mod:`tuitop.tasks`), which runs every topic of a real Tuleap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tuitop.config import Settings
from tuitop.mail import MailTransport
from tuitop.outcome import Outcome


class PayloadError(Exception):
    """The payload is not what the topic needs (says where and what was expected)."""


class PermanentFailure(Exception):
    """The job cannot succeed as it is; ``payload`` (if given) is what to keep for replay."""

    def __init__(self, reason: str, payload: Any = None) -> None:
        super().__init__(reason)
        self.payload = payload


class RetryLater(Exception):
    """The job should be tried again; ``payload`` (if given) replaces the original's.

    ``detail`` is kept with the message if it ends in the dead letters (a task's stderr,
    say); ``outcome`` is the stats counter it adds to: ``failed``, ``timedout`` (a task
    past the time limit) or ``unanswered`` (a mail sent whole, the relay's answer lost)."""

    def __init__(
        self,
        reason: str,
        payload: Any = None,
        *,
        detail: str = "",
        outcome: Outcome = Outcome.FAILED,
    ) -> None:
        super().__init__(reason)
        self.payload = payload
        self.detail = detail
        self.outcome = outcome


@dataclass
class Job:
    """What a handler gets besides the payload."""

    settings: Settings
    logger: logging.Logger
    worker_id: str
    mail: MailTransport
    topic: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    raw: bytes = b""
    """The message exactly as it was stored (what Tuleap's task process reads)."""
    child_started: Callable[[int], None] = lambda pid: None
    """A handler that runs a child process tells its pid here (0 when it ended), so that
    the pool can kill its process group if the worker dies."""


Handler = Callable[[Any, Job], None]
Accepts = Callable[[Any], bool]


class HandlerRegistry:
    """The handlers a worker knows, by topic, and the fallback for the rest."""

    def __init__(self) -> None:
        self._handlers: dict[str, tuple[Handler, Accepts | None]] = {}
        self.fallback: Handler | None = None
        """Runs what no handler takes (Tuleap's task process), or None."""

    def register(self, topic: str, handler: Handler, accepts: Accepts | None = None) -> None:
        """``handler`` runs ``topic``; with ``accepts``, only the payloads it says True of
        (the others go to the fallback)."""
        self._handlers[topic] = (handler, accepts)

    def resolve(self, topic: str, payload: Any) -> Handler | None:
        """The handler for this message: the topic's when it accepts the payload, else the
        fallback; None when there is neither."""
        entry = self._handlers.get(topic)
        if entry is not None and (entry[1] is None or entry[1](payload)):
            return entry[0]
        return self.fallback

    def topics(self) -> list[str]:
        return sorted(self._handlers)
