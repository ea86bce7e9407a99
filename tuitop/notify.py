"""The producer side, for front ends: send a notification the way the config says.

As Tuleap's front end does: when ``$sys_async_emails`` covers the notification's project
(the scope the pools published in the queue's store, so that a saved config applies here
too),
the notification is queued for the workers; otherwise its mails are sent inline, here and
now. When queueing fails, it logs Tuleap's line ("Unable to queue notification for …,
fallback to online notif") and sends inline: a notification is never dropped.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from typing import Any

from tuitop.backends import open_queue
from tuitop.backends.base import QueueAdmin
from tuitop.backends.errors import MaybeWritten, StoreError
from tuitop.config import AsyncScope, Settings
from tuitop.handlers import PayloadError, PermanentFailure, RetryLater
from tuitop.mail import MailTransport, transport_for
from tuitop.message import encode
from tuitop.notification import TOPIC, Notification, parse_notification, send_notification

SCOPE_CACHE_SECONDS = 1.0
QUEUED = "queued"
SENT = "sent"


class NotificationError(Exception):
    """Sending inline failed (the mails not sent are in ``payload``)."""

    def __init__(self, reason: str, payload: Any) -> None:
        super().__init__(reason)
        self.payload = payload


class Notifier:
    """Routes notifications by the async scope in force. Reusable; not thread-safe."""

    def __init__(
        self,
        settings: Settings,
        *,
        queue: QueueAdmin | None = None,
        transport: MailTransport | None = None,
        logger: logging.Logger | None = None,
        sendmail: str | None = None,
    ) -> None:
        self.settings = settings
        self._queue = queue
        """The queue pushed to (made from ``settings`` at first use, and again after an
        error)."""
        self._transport = transport
        self._sendmail = sendmail
        self.logger = logger or logging.getLogger("tuitop.notify")
        self._scope = settings.async_scope
        self._scope_checked = -SCOPE_CACHE_SECONDS

    def notify(self, notification: Notification) -> str:
        """Queues or sends ``notification``; returns ``'queued'`` or ``'sent'``.

        Raises NotificationError when it is malformed (a recipient that is not an address,
        say: checked here, so that no worker gets it), or had to be sent inline and failed.
        """
        try:
            parse_notification(notification.to_payload())
        except PayloadError as error:
            raise NotificationError(f"malformed notification: {error}", None) from None
        if self.scope().covers(notification.project_id) and self._queued(notification):
            return QUEUED
        try:
            send_notification(notification, self._mail(), self.settings.mail.noreply, self.logger)
        except (RetryLater, PermanentFailure) as error:
            raise NotificationError(str(error), error.payload) from None
        return SENT

    def _queued(self, notification: Notification) -> bool:
        """Pushes it; False when it was not queued (to be sent inline). A push whose reply
        is lost is asked about (its marker, on a fresh connection): queued, it is not also
        sent inline — the mail would go out twice."""
        store = self.settings.store
        if not store.configured:
            reason = "$redis_server is empty, and no database is configured"
        else:
            token = uuid.uuid4().hex
            queue: QueueAdmin | None = None
            try:
                queue = self._connection()
                queue.push_marked(encode(TOPIC, notification.to_payload()), token)
                return True
            except StoreError as error:
                reason = str(error)
                timed_out = queue is not None and isinstance(error, MaybeWritten)
                self._drop()
            try:
                if self._connection().was_pushed(token):
                    self.logger.warning(
                        "[Notification] the reply to queueing notification for %d was lost, "
                        "but it is queued (%s)",
                        notification.artifact_id,
                        reason,
                    )
                    return True
                if timed_out:
                    # Still on its way, the push may land after this question: both then.
                    reason += "; the push timed out and may still land: it may come twice"
            except StoreError:
                self._drop()
                reason += "; whether it reached the queue cannot be told: it may come twice"
        self.logger.warning(
            "[Notification] Unable to queue notification for %d, fallback to online notif (%s)",
            notification.artifact_id,
            reason,
        )
        return False

    def scope(self) -> AsyncScope:
        """The async scope in force: the one the pools published in the queue's store
        (read at most once a second), else the one of this process's settings."""
        now = time.monotonic()
        if now < self._scope_checked + SCOPE_CACHE_SECONDS:
            return self._scope
        self._scope_checked = now
        self._scope = self.settings.async_scope
        store = self.settings.store
        if not store.configured:
            return self._scope
        try:
            published = self._connection().published_config().get("async_scope")
        except StoreError:
            self._drop()
            return self._scope
        if published is not None:
            with contextlib.suppress(ValueError):
                self._scope = AsyncScope.parse(published)
        return self._scope

    def _connection(self) -> QueueAdmin:
        if self._queue is None:
            self._queue = open_queue(self.settings.store, "tuitop:notifier")
        return self._queue

    def _drop(self) -> None:
        """Forgets the connection: the next question goes on a fresh one."""
        if self._queue is not None:
            self._queue.close()
            self._queue = None

    def _mail(self) -> MailTransport:
        if self._transport is None:
            if self._sendmail:
                self._transport = transport_for(self.settings.mail, self._sendmail)
            else:
                self._transport = transport_for(self.settings.mail)
        return self._transport

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._drop()
