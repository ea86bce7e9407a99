"""The mail benchmark's other case: tuitop's notification handler, with a new SMTP
connection for every mail instead of the worker's kept one.

A plugin module for ``tuitop --handlers bench.fresh_mail_handler``: it registers the
notification topic again (a plugin's registration replaces the built-in one), with the same
parsing and sending (:func:`tuitop.notification.send_notification`) and the same
:class:`tuitop.mail.SmtpTransport`, only made anew (connect, EHLO, the mail, QUIT) for each
mail. No knob in tuitop: a connection per mail is not an operator's option, only the
comparison's.
"""

from __future__ import annotations

from email.message import EmailMessage
from typing import Any

from tuitop.config import MailSettings
from tuitop.handlers import HandlerRegistry, Job
from tuitop.mail import SmtpTransport
from tuitop.notification import TOPIC, carries_mails, parse_notification, send_notification


class FreshConnectionTransport:
    """A :class:`tuitop.mail.MailTransport` that opens and closes a connection per mail."""

    def __init__(self, settings: MailSettings) -> None:
        self.settings = settings

    def send(self, message: EmailMessage) -> list[str]:
        transport = SmtpTransport(self.settings)
        try:
            return transport.send(message)
        finally:
            transport.close()

    def close(self) -> None:
        pass


def handle_notification(payload: Any, job: Job) -> None:
    """:func:`tuitop.notification.handle_notification`, but for the transport."""
    notification = parse_notification(payload)
    transport = FreshConnectionTransport(job.settings.mail)
    send_notification(notification, transport, job.settings.mail.noreply, job.logger)


def register(registry: HandlerRegistry) -> None:
    registry.register(TOPIC, handle_notification, accepts=carries_mails)
