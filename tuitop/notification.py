"""Notification mails: the payload, the mails it becomes, and the worker's handler.

Tuleap's notification topic carries ids only and its worker reads the database; tuitop has
no Tuleap database, so its notification messages carry what the mails need::

    {"project_id": 101, "artifact_id": 42, "changeset_id": 1001,
     "mails": [{"to": ["a@example.com"], "subject": "...", "text": "...", "html": "..."}]}

``html`` is optional. The handler logs Tuleap's markers, ``Start notification`` and
``End notification`` (the time between them is what Tuleap's guide tells admins to
measure), under the key ``Notification``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Any

from tuitop.handlers import Job, PayloadError, PermanentFailure, RetryLater
from tuitop.mail import MailTransport, PermanentMailError, TransientMailError, UncertainMailError
from tuitop.outcome import Outcome

TOPIC = "tuleap.tracker.artifact"
NOTIFICATION_TOPICS = frozenset({TOPIC, "tuleap.pullrequest.notification"})
"""The topics whose latency is the notifications' (the UI's Notification latency)."""
LOG_KEY = "Notification"
UNANSWERED = Outcome.UNANSWERED
"""The stats counter of a try cut short after a whole mail, before the relay's answer
(the outcome of its RetryLater): that mail is sent again on the retry, and may come twice."""


@dataclass(frozen=True)
class Mail:
    to: tuple[str, ...]
    subject: str
    text: str
    html: str | None = None

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"to": list(self.to), "subject": self.subject, "text": self.text}
        if self.html is not None:
            document["html"] = self.html
        return document


@dataclass(frozen=True)
class Notification:
    project_id: int
    artifact_id: int
    changeset_id: int
    mails: tuple[Mail, ...]

    def to_payload(self, mails: tuple[Mail, ...] | None = None) -> dict[str, Any]:
        """The wire payload (with ``mails`` instead of all of them, for a partial retry)."""
        return {
            "project_id": self.project_id,
            "artifact_id": self.artifact_id,
            "changeset_id": self.changeset_id,
            "mails": [mail.to_json() for mail in (self.mails if mails is None else mails)],
        }

    def describe(self) -> str:
        return f"artifact #{self.artifact_id} changeset #{self.changeset_id}"


def _integer(document: dict[str, Any], name: str) -> int:
    value = document.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"payload.{name}: expected an integer, got {_kind(value)}")
    return value


def _text(document: dict[str, Any], name: str, where: str, optional: bool = False) -> str | None:
    value = document.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise PayloadError(f"{where}.{name}: expected a string, got {_kind(value)}")
    if not _is_unicode(value):
        raise PayloadError(f"{where}.{name}: not Unicode text (a lone surrogate)")
    return value


def _is_unicode(value: str) -> bool:
    # JSON can carry "\ud800", which no mail can: sending it would fail halfway through.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def carries_mails(payload: Any) -> bool:
    """True for tuitop's notification payload (it has ``mails``); Tuleap's own, which holds
    only ids, is for Tuleap's task process."""
    return isinstance(payload, dict) and "mails" in payload


def parse_notification(payload: Any) -> Notification:
    """Checks a payload's shape; raises PayloadError saying where it is wrong."""
    if not isinstance(payload, dict):
        raise PayloadError(f"payload: expected an object, got {_kind(payload)}")
    mails_value = payload.get("mails")
    if not isinstance(mails_value, list) or not mails_value:
        raise PayloadError("payload.mails: expected a non-empty list of mails")
    mails = []
    for index, item in enumerate(mails_value):
        where = f"payload.mails[{index}]"
        if not isinstance(item, dict):
            raise PayloadError(f"{where}: expected an object, got {_kind(item)}")
        recipients = item.get("to")
        if not isinstance(recipients, list) or not recipients:
            raise PayloadError(f"{where}.to: expected a non-empty list of addresses")
        for position, address in enumerate(recipients):
            if (
                not isinstance(address, str)
                or "@" not in parseaddr(address)[1]
                or "\r" in address
                or "\n" in address
                or not _is_unicode(address)
            ):
                raise PayloadError(f"{where}.to[{position}]: expected an e-mail address")
        mails.append(
            Mail(
                to=tuple(recipients),
                subject=_text(item, "subject", where) or "",
                text=_text(item, "text", where) or "",
                html=_text(item, "html", where, optional=True),
            )
        )
    return Notification(
        project_id=_integer(payload, "project_id"),
        artifact_id=_integer(payload, "artifact_id"),
        changeset_id=_integer(payload, "changeset_id"),
        mails=tuple(mails),
    )


def build_email(mail: Mail, sender: str, notification: Notification) -> EmailMessage:
    """The RFC 5322 message for one mail of a notification."""
    message = EmailMessage()
    if sender:
        message["From"] = sender
    message["To"] = ", ".join(mail.to)
    # A header cannot hold a line break (EmailMessage raises): one line, as mailers do.
    message["Subject"] = re.sub(r"[\r\n]+", " ", mail.subject)
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=parseaddr(sender)[1].partition("@")[2] or None)
    message["X-Tuleap-Project-Id"] = str(notification.project_id)
    message["X-Tuleap-Artifact-Id"] = str(notification.artifact_id)
    message.set_content(mail.text)
    if mail.html is not None:
        message.add_alternative(mail.html, subtype="html")
    return message


def send_notification(
    notification: Notification, transport: MailTransport, sender: str, job_logger: Any
) -> None:
    """Sends every mail in order; raises RetryLater / PermanentFailure with a payload that
    holds only the mails the relay did not take, so that a retry never sends again a mail
    the relay answered 250 to.

    A mail that went out whole but whose answer was lost is not taken (RFC 5321 §6.1):
    it stays in the retry's payload (RetryLater with the outcome UNANSWERED), and, logged
    as such, it may come twice."""
    logger = job_logger
    started = time.monotonic()
    logger.info("[%s] Start notification %s", LOG_KEY, notification.describe())
    rejected: list[Mail] = []
    reasons: list[str] = []
    for index, mail in enumerate(notification.mails):
        try:
            refused = transport.send(build_email(mail, sender, notification))
        except UncertainMailError as error:
            # Without its 250 the mail is still ours: a relay that died before storing it
            # would lose it. Sent again; if the relay had stored it, it comes twice.
            left = tuple(rejected) + notification.mails[index:]
            logger.warning(
                "[%s] %s: mail to %s: %s; %d mail(s) left for a retry, that one included: "
                "it may come twice",
                LOG_KEY,
                notification.describe(),
                ", ".join(mail.to),
                error,
                len(left),
            )
            raise RetryLater(
                f"mail to {', '.join(mail.to)}: {error}; sent again on the retry: "
                "it may come twice",
                notification.to_payload(left),
                outcome=UNANSWERED,
            ) from None
        except TransientMailError as error:
            left = tuple(rejected) + notification.mails[index:]
            logger.warning(
                "[%s] %s: %s; %d mail(s) left for a retry",
                LOG_KEY,
                notification.describe(),
                error,
                len(left),
            )
            raise RetryLater(str(error), notification.to_payload(left)) from None
        except PermanentMailError as error:
            logger.error(
                "[%s] %s: mail to %s: %s", LOG_KEY, notification.describe(), mail.to, error
            )
            rejected.append(mail)
            reasons.append(str(error))
            continue
        if refused:
            logger.warning("[%s] recipients refused by the relay: %s", LOG_KEY, ", ".join(refused))
    elapsed = time.monotonic() - started
    logger.info(
        "[%s] End notification %s (%d mail(s) in %.3f seconds)",
        LOG_KEY,
        notification.describe(),
        len(notification.mails) - len(rejected),
        elapsed,
    )
    if rejected:
        raise PermanentFailure(
            "; ".join(sorted(set(reasons))), notification.to_payload(tuple(rejected))
        )


def handle_notification(payload: Any, job: Job) -> None:
    """The worker's handler for ``tuleap.tracker.artifact``."""
    notification = parse_notification(payload)
    send_notification(notification, job.mail, job.settings.mail.noreply, job.logger)
