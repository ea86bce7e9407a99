"""Sending mail as Tuleap's config says: ``sendmail`` (a pipe) or ``smtp`` (a relay).

Failures are sorted so the worker knows what to do: :class:`TransientMailError` (try
again later: 4xx answers, a relay that cannot be reached, sendmail failing),
:class:`PermanentMailError` (trying again will not help: 5xx answers, no usable transport)
and :class:`UncertainMailError` (the mail went out whole and the relay's answer was lost:
try again later, and it may come twice).
"""

from __future__ import annotations

import contextlib
import smtplib
import ssl
import subprocess
from email.message import EmailMessage
from typing import TYPE_CHECKING, Protocol

from tuitop.config import MailSettings

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

DEFAULT_SENDMAIL = "/usr/sbin/sendmail"
SMTP_TIMEOUT = 30.0


class MailError(Exception):
    """A mail was not sent."""


class TransientMailError(MailError):
    """Not sent now; the same mail may well go through later."""


class PermanentMailError(MailError):
    """Not sent, and sending it again as it is will fail again."""


class UncertainMailError(MailError):
    """The mail went out whole, but the relay's answer was lost (the line closed, or no
    answer in time): the relay may have it, or may have died before storing it.

    Only the relay's 250 takes the mail off the sender's hands (RFC 5321 §6.1): it is
    still the sender's to send again, as MTAs do, and sent again it may come twice."""


class _MailEndWatch:
    """Mixed into smtplib's clients: says whether the end of a mail's data went out (the
    moment after which the relay may hold it, answer or not)."""

    mail_end_sent = False

    def send(self, s: ReadableBuffer | str) -> None:
        super().send(s)  # type: ignore[misc]
        # smtplib sends a mail's data, its ending "." line included, as one bytes block.
        if isinstance(s, bytes) and s.endswith(b"\r\n.\r\n"):
            self.mail_end_sent = True


class _SMTP(_MailEndWatch, smtplib.SMTP):
    pass


class _SMTP_SSL(_MailEndWatch, smtplib.SMTP_SSL):
    pass


class MailTransport(Protocol):
    def send(self, message: EmailMessage) -> list[str]:
        """Sends one mail or raises a MailError; returns the recipients the server refused
        while it took the mail for the others."""

    def close(self) -> None:
        """Releases connections; the transport may be used again afterwards."""


class SendmailTransport:
    """Pipes each mail to ``sendmail -t -i`` (recipients from the headers, as Tuleap)."""

    def __init__(self, path: str = DEFAULT_SENDMAIL, timeout: float = 60.0) -> None:
        self.path = path
        self.timeout = timeout

    def send(self, message: EmailMessage) -> list[str]:
        try:
            result = subprocess.run(
                [self.path, "-t", "-i"],
                input=message.as_bytes(),
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
        except FileNotFoundError:
            raise PermanentMailError(f"sendmail not found at {self.path}") from None
        except (OSError, subprocess.TimeoutExpired) as error:
            raise TransientMailError(f"sendmail failed: {error}") from None
        if result.returncode != 0:
            detail = result.stderr.decode("utf-8", "replace").strip()[:300]
            raise TransientMailError(f"sendmail exited with {result.returncode}: {detail}")
        return []

    def close(self) -> None:
        pass


class SmtpTransport:
    """Sends through the relay, keeping the connection open between mails."""

    def __init__(self, settings: MailSettings, timeout: float = SMTP_TIMEOUT) -> None:
        self.settings = settings
        self.timeout = timeout
        self._client: _SMTP | _SMTP_SSL | None = None

    def _connect(self) -> _SMTP | _SMTP_SSL:
        mail = self.settings
        try:
            client: _SMTP | _SMTP_SSL
            if mail.implicit_tls:
                context = ssl.create_default_context()
                client = _SMTP_SSL(
                    mail.relay_host, mail.relay_port, timeout=self.timeout, context=context
                )
            else:
                client = _SMTP(mail.relay_host, mail.relay_port, timeout=self.timeout)
                if mail.starttls:
                    client.starttls(context=ssl.create_default_context())
            if mail.username:
                # AUTH needs EHLO first (smtplib's auth() does not send it, and reads the
                # relay's "503 send EHLO first" as success).
                client.ehlo_or_helo_if_needed()
                client.user, client.password = mail.username, mail.password.reveal()
                method = client.auth_login if mail.auth_type == "login" else client.auth_plain
                client.auth(mail.auth_type.upper(), method)
        except smtplib.SMTPAuthenticationError as error:
            raise PermanentMailError(f"the relay refused the login ({error.smtp_code})") from None
        except (OSError, smtplib.SMTPException) as error:
            raise TransientMailError(
                f"cannot reach the relay {mail.relay_host}:{mail.relay_port}: {error}"
            ) from None
        return client

    def send(self, message: EmailMessage) -> list[str]:
        """Sends once: a mail whose end went out is never sent again here, whatever
        happens to the answer (UncertainMailError: whether to send it again, and when, is
        the caller's)."""
        for attempt in (1, 2):
            if self._client is None:
                self._client = self._connect()
            client = self._client
            client.mail_end_sent = False
            try:
                refused = client.send_message(message)
            except smtplib.SMTPRecipientsRefused as error:
                codes = {code for code, _ in error.recipients.values()}
                raise _by_code(min(codes), "every recipient was refused") from None
            except smtplib.SMTPResponseException as error:  # the relay answered: it is sure
                text = error.smtp_error
                detail = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
                raise _by_code(error.smtp_code, detail) from None
            except OSError as error:  # the line lost or silent (smtplib's errors are OSErrors)
                if client.mail_end_sent:
                    self.close()
                    raise UncertainMailError(
                        f"the relay's answer to a whole mail was lost ({error}): it may have it"
                    ) from None
                if not isinstance(error, smtplib.SMTPServerDisconnected):
                    self.close()
                    raise TransientMailError(f"sending failed: {error}") from None
                # A kept connection the relay closed meanwhile, before this mail: once more.
                self._client = None
                if attempt == 2:
                    raise TransientMailError("the relay closed the connection") from None
                continue
            return list(refused)
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                self._client.quit()
            self._client = None


class NoTransport:
    """Tuleap's behaviour for an unknown ``$email_transport``: nothing is sent."""

    def __init__(self, why: str) -> None:
        self.why = why

    def send(self, message: EmailMessage) -> list[str]:
        raise PermanentMailError(self.why)

    def close(self) -> None:
        pass


def _by_code(code: int, text: str) -> MailError:
    if 400 <= code < 500:
        return TransientMailError(f"the relay answered {code}: {text}")
    return PermanentMailError(f"the relay answered {code}: {text}")


def transport_for(settings: MailSettings, sendmail_path: str = DEFAULT_SENDMAIL) -> MailTransport:
    """The transport ``$email_transport`` asks for."""
    if settings.transport == "sendmail":
        return SendmailTransport(sendmail_path)
    if settings.transport == "smtp" and settings.relay_host:
        return SmtpTransport(settings)
    return NoTransport(f"no mail transport: {settings.describe()}")
