"""Notification mails: the payload's shape, the mails it becomes, and sending them for real.

Mails go to the recording SMTP server through :class:`tuitop.mail.SmtpTransport`, or to a
small shell script standing in for sendmail.
"""

from __future__ import annotations

import copy
import json
import logging
import stat
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SmtpServerFactory
from tuitop.config import MailSettings, Secret, Settings
from tuitop.embedded.smtpserver import SmtpServer
from tuitop.handlers import Job, PayloadError, PermanentFailure, RetryLater
from tuitop.mail import (
    MailTransport,
    NoTransport,
    PermanentMailError,
    SendmailTransport,
    SmtpTransport,
    TransientMailError,
    UncertainMailError,
    transport_for,
)
from tuitop.notification import (
    TOPIC,
    UNANSWERED,
    Mail,
    Notification,
    build_email,
    handle_notification,
    parse_notification,
    send_notification,
)
from tuitop.registry import build_registry

SENDER = '"Tuleap" <noreply@tuleap.example>'
SENDER_ADDRESS = "noreply@tuleap.example"
SENDER_PARSED = ("Tuleap", SENDER_ADDRESS)
LOGGER = "tests.notification"


def payload(mails: int = 1) -> dict[str, Any]:
    """The documented payload, with ``mails`` mails."""
    return {
        "project_id": 101,
        "artifact_id": 42,
        "changeset_id": 1001,
        "mails": [
            {
                "to": [f"user{n}@example.com"],
                "subject": f"[bug #42] mail {n}",
                "text": f"Text of mail {n}\n",
                "html": f"<p>HTML of mail {n}</p>\n",
            }
            for n in range(1, mails + 1)
        ],
    }


def smtp_settings(server: SmtpServer, **options: Any) -> MailSettings:
    return MailSettings(
        transport="smtp",
        noreply=SENDER,
        relay_host=server.host,
        relay_port=server.port,
        **options,
    )


def subjects(server: SmtpServer) -> list[str]:
    return [received.subject for received in server.messages]


class RefuseOneMail:
    """A real SmtpTransport that tells the server to refuse the ``number``-th mail it sends
    (1-based): the server's refusals apply to the next message, whatever it is."""

    def __init__(self, inner: MailTransport, server: SmtpServer, number: int, reply: str) -> None:
        self.inner = inner
        self.server = server
        self.number = number
        self.reply = reply
        self.sent = 0

    def send(self, message: EmailMessage) -> list[str]:
        self.sent += 1
        if self.sent == self.number:
            self.server.refuse(self.reply, times=1)
        return self.inner.send(message)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def logger() -> logging.Logger:
    return logging.getLogger(LOGGER)


# --- parse_notification -----------------------------------------------------------------


def test_parse_the_documented_payload() -> None:
    notification = parse_notification(payload(2))
    assert (notification.project_id, notification.artifact_id, notification.changeset_id) == (
        101,
        42,
        1001,
    )
    assert notification.mails == (
        Mail(
            ("user1@example.com",),
            "[bug #42] mail 1",
            "Text of mail 1\n",
            "<p>HTML of mail 1</p>\n",
        ),
        Mail(
            ("user2@example.com",),
            "[bug #42] mail 2",
            "Text of mail 2\n",
            "<p>HTML of mail 2</p>\n",
        ),
    )
    assert notification.to_payload() == payload(2)
    assert notification.describe() == "artifact #42 changeset #1001"


def test_parse_optional_and_unusual_but_valid_values() -> None:
    document = payload(1)
    mail = document["mails"][0]
    del mail["html"]
    mail["to"] = ["Alice Été <alice@example.com>", "bob@example.com"]
    mail["subject"] = ""
    document["mails"].append({"to": ["c@example.com"], "subject": "s", "text": "t", "html": None})
    notification = parse_notification(document)
    assert notification.mails[0].html is None
    assert notification.mails[0].to == ("Alice Été <alice@example.com>", "bob@example.com")
    assert notification.mails[0].subject == ""
    assert notification.mails[1].html is None
    assert "html" not in notification.to_payload()["mails"][0]


def changed(path: str, value: Any) -> dict[str, Any]:
    """The documented payload with the value at ``path`` (``a.b.0.c``) replaced, or removed
    when ``value`` is ``REMOVE``."""
    document = copy.deepcopy(payload(2))
    *parents, last = path.split(".")
    target: Any = document
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    key: Any = int(last) if isinstance(target, list) else last
    if value is REMOVE:
        del target[key]
    else:
        target[key] = value
    return document


REMOVE = object()
# What json.loads makes of "\ud800": a str that no mail can carry (it is not Unicode text).
LONE_SURROGATE = json.loads('"a \\ud800 b"')


@pytest.mark.parametrize(
    ("document", "where"),
    [
        ([], "payload"),
        ("mails", "payload"),
        (None, "payload"),
        (42, "payload"),
        (changed("mails", REMOVE), "payload.mails"),
        (changed("mails", []), "payload.mails"),
        (changed("mails", "user@example.com"), "payload.mails"),
        (changed("mails", {"to": ["a@example.com"]}), "payload.mails"),
        (changed("mails.0", "a mail"), "payload.mails[0]"),
        (changed("mails.1", None), "payload.mails[1]"),
        (changed("mails.1", ["a@example.com"]), "payload.mails[1]"),
        (changed("mails.0.to", REMOVE), "payload.mails[0].to"),
        (changed("mails.0.to", []), "payload.mails[0].to"),
        (changed("mails.0.to", "a@example.com"), "payload.mails[0].to"),
        (changed("mails.0.to", {"a": "a@example.com"}), "payload.mails[0].to"),
        (changed("mails.0.to", ["not an address"]), "payload.mails[0].to[0]"),
        (changed("mails.1.to", ["a@example.com", ""]), "payload.mails[1].to[1]"),
        (changed("mails.1.to", ["a@example.com", 7]), "payload.mails[1].to[1]"),
        (changed("mails.1.to", [None]), "payload.mails[1].to[0]"),
        (changed("mails.0.to", ["a@example.com\nBcc: evil@example.org"]), "payload.mails[0].to[0]"),
        (changed("mails.1.to", ["a@example.com\r"]), "payload.mails[1].to[0]"),
        (changed("mails.0.to", [LONE_SURROGATE + "@example.com"]), "payload.mails[0].to[0]"),
        (changed("mails.0.subject", REMOVE), "payload.mails[0].subject"),
        (changed("mails.1.subject", LONE_SURROGATE), "payload.mails[1].subject"),
        (changed("mails.1.text", LONE_SURROGATE), "payload.mails[1].text"),
        (changed("mails.0.html", LONE_SURROGATE), "payload.mails[0].html"),
        (changed("mails.0.subject", 12), "payload.mails[0].subject"),
        (changed("mails.1.subject", ["s"]), "payload.mails[1].subject"),
        (changed("mails.0.text", None), "payload.mails[0].text"),
        (changed("mails.0.text", False), "payload.mails[0].text"),
        (changed("mails.0.html", 1), "payload.mails[0].html"),
        (changed("mails.1.html", {"p": "x"}), "payload.mails[1].html"),
        (changed("project_id", "101"), "payload.project_id"),
        (changed("project_id", True), "payload.project_id"),
        (changed("project_id", REMOVE), "payload.project_id"),
        (changed("artifact_id", 42.0), "payload.artifact_id"),
        (changed("artifact_id", False), "payload.artifact_id"),
        (changed("changeset_id", None), "payload.changeset_id"),
        (changed("changeset_id", [1001]), "payload.changeset_id"),
    ],
)
def test_parse_rejects_a_wrong_shape_saying_where(document: Any, where: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_notification(document)
    assert str(caught.value).startswith(f"{where}:"), str(caught.value)


# --- build_email ------------------------------------------------------------------------


def test_build_email_with_text_and_html() -> None:
    notification = parse_notification(payload(1))
    mail = Mail(
        ("a@example.com", "Bé <b@example.com>"), "Bug #42: état ✓", "Plain\n", "<b>Rich</b>\n"
    )
    message = build_email(mail, SENDER, notification)
    assert parseaddr(str(message["From"])) == SENDER_PARSED
    assert message["To"] == "a@example.com, Bé <b@example.com>"
    assert message["Subject"] == "Bug #42: état ✓"
    assert message["Date"]
    assert str(message["Message-ID"]).endswith("@tuleap.example>")
    assert message["X-Tuleap-Project-Id"] == "101"
    assert message["X-Tuleap-Artifact-Id"] == "42"
    assert message.get_content_type() == "multipart/alternative"
    text, html = message.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert text.get_content() == "Plain\n"
    assert html.get_content_type() == "text/html"
    assert html.get_content() == "<b>Rich</b>\n"


def test_build_email_text_only() -> None:
    notification = parse_notification(payload(1))
    message = build_email(Mail(("a@example.com",), "s", "Only text\n"), SENDER, notification)
    assert message.get_content_type() == "text/plain"
    assert not message.is_multipart()
    assert message.get_content() == "Only text\n"


def test_build_email_without_a_sender_has_no_from() -> None:
    notification = parse_notification(payload(1))
    message = build_email(notification.mails[0], "", notification)
    assert message["From"] is None
    assert message["Message-ID"]


# --- send_notification over SMTP --------------------------------------------------------


def test_every_mail_arrives(smtp_server: SmtpServer, logger: logging.Logger) -> None:
    transport = SmtpTransport(smtp_settings(smtp_server))
    try:
        send_notification(parse_notification(payload(3)), transport, SENDER, logger)
    finally:
        transport.close()
    received = smtp_server.wait_for(3)
    assert subjects(smtp_server) == ["[bug #42] mail 1", "[bug #42] mail 2", "[bug #42] mail 3"]
    for number, message in enumerate(received, start=1):
        assert message.mail_from == SENDER_ADDRESS
        assert message.recipients == (f"user{number}@example.com",)
        assert parseaddr(str(message.message["From"])) == SENDER_PARSED
        [text, html] = message.message.iter_parts()
        assert text.get_content() == f"Text of mail {number}\n"
        assert html.get_content() == f"<p>HTML of mail {number}</p>\n"
    assert smtp_server.refused == []


def test_start_and_end_are_logged(
    smtp_server: SmtpServer, logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    transport = SmtpTransport(smtp_settings(smtp_server))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        send_notification(parse_notification(payload(2)), transport, SENDER, logger)
    transport.close()
    lines = [record.getMessage() for record in caplog.records if record.name == LOGGER]
    assert lines[0] == "[Notification] Start notification artifact #42 changeset #1001"
    assert lines[-1].startswith(
        "[Notification] End notification artifact #42 changeset #1001 (2 mail(s) in "
    )
    assert lines[-1].endswith(" seconds)")


def test_a_451_on_the_second_mail_retries_only_what_was_not_sent(
    smtp_server: SmtpServer, logger: logging.Logger
) -> None:
    notification = parse_notification(payload(3))
    transport = RefuseOneMail(
        SmtpTransport(smtp_settings(smtp_server)), smtp_server, 2, "451 4.3.0 Try again later"
    )
    with pytest.raises(RetryLater) as caught:
        send_notification(notification, transport, SENDER, logger)
    assert "451" in str(caught.value)
    assert caught.value.payload == notification.to_payload(notification.mails[1:])
    assert subjects(smtp_server) == ["[bug #42] mail 1"]
    assert [message.subject for message in smtp_server.refused] == ["[bug #42] mail 2"]

    # The retry sends mails 2 and 3, and mail 1 only ever once.
    send_notification(parse_notification(caught.value.payload), transport, SENDER, logger)
    transport.close()
    assert subjects(smtp_server) == ["[bug #42] mail 1", "[bug #42] mail 2", "[bug #42] mail 3"]


def test_a_550_dead_letters_only_the_refused_mail(
    smtp_server: SmtpServer, logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    notification = parse_notification(payload(3))
    transport = RefuseOneMail(
        SmtpTransport(smtp_settings(smtp_server)), smtp_server, 2, "550 5.7.1 Rejected"
    )
    with caplog.at_level(logging.INFO, logger=LOGGER), pytest.raises(PermanentFailure) as caught:
        send_notification(notification, transport, SENDER, logger)
    transport.close()
    assert "550" in str(caught.value)
    assert caught.value.payload == notification.to_payload(notification.mails[1:2])
    assert subjects(smtp_server) == ["[bug #42] mail 1", "[bug #42] mail 3"]
    assert [message.subject for message in smtp_server.refused] == ["[bug #42] mail 2"]
    lines = [record.getMessage() for record in caplog.records if record.name == LOGGER]
    assert any("(2 mail(s) in" in line and "End notification" in line for line in lines)
    assert any(
        record.levelno == logging.ERROR and "user2@example.com" in record.getMessage()
        for record in caplog.records
    )


def test_a_retry_after_a_refusal_never_holds_a_sent_mail(
    smtp_server: SmtpServer, logger: logging.Logger
) -> None:
    notification = parse_notification(payload(4))
    # Mail 1 goes, mail 2 is refused for good, mail 3 for now; mail 4 is not tried.
    refusing = RefuseOneMail(
        SmtpTransport(smtp_settings(smtp_server)), smtp_server, 2, "550 5.1.1 No such user"
    )
    transport = RefuseOneMail(refusing, smtp_server, 3, "451 4.3.0 Later")
    with pytest.raises(RetryLater) as caught:
        send_notification(notification, transport, SENDER, logger)
    transport.close()
    assert subjects(smtp_server) == ["[bug #42] mail 1"]
    left = [mail["subject"] for mail in caught.value.payload["mails"]]
    # Everything not sent is kept (the refused one too, for the dead letter in the end).
    assert left == ["[bug #42] mail 2", "[bug #42] mail 3", "[bug #42] mail 4"]


def test_a_bad_mail_in_the_middle_is_caught_before_any_is_sent(smtp_server: SmtpServer) -> None:
    # A payload the mails cannot be built from must fail as a whole, before mail 1 goes:
    # a plain exception after it would have the worker retry (and resend) everything.
    document = changed("mails.1.text", LONE_SURROGATE)
    document["mails"].append(payload(3)["mails"][2])
    settings = Settings(mail=smtp_settings(smtp_server))
    transport = SmtpTransport(settings.mail)
    job = Job(settings, logging.getLogger(LOGGER), "host/1", transport, TOPIC)
    with pytest.raises(PayloadError, match=r"^payload\.mails\[1\]\.text:"):
        handle_notification(document, job)
    transport.close()
    assert smtp_server.messages == []


@pytest.mark.parametrize(
    "subject",
    [
        "Bug #42:\nthe build is red",
        "Bug #42:\r\nthe build is red",
        "Bug #42:\r\n\nthe build is red",
    ],
)
def test_a_subject_on_several_lines_is_sent_on_one(
    smtp_server: SmtpServer, logger: logging.Logger, subject: str
) -> None:
    document = payload(2)
    document["mails"][0]["subject"] = subject
    document["mails"][1]["subject"] = "Hi\nBcc: evil@example.org"
    transport = SmtpTransport(smtp_settings(smtp_server))
    send_notification(parse_notification(document), transport, SENDER, logger)
    transport.close()
    first, second = smtp_server.wait_for(2)
    assert first.subject == "Bug #42: the build is red"
    assert second.subject == "Hi Bcc: evil@example.org"
    assert second.recipients == ("user2@example.com",)  # no header was injected
    assert second.message["Bcc"] is None


def test_an_unreachable_relay_retries_every_mail(
    smtp_server: SmtpServer, logger: logging.Logger
) -> None:
    settings = smtp_settings(smtp_server)
    smtp_server.stop()
    notification = parse_notification(payload(2))
    transport = SmtpTransport(settings, timeout=2.0)
    with pytest.raises(RetryLater) as caught:
        send_notification(notification, transport, SENDER, logger)
    assert "cannot reach the relay" in str(caught.value)
    assert caught.value.payload == notification.to_payload()


@pytest.mark.parametrize("auth_type", ["plain", "login"])
def test_auth_with_the_right_password(
    smtp_server_factory: SmtpServerFactory, logger: logging.Logger, auth_type: str
) -> None:
    server = smtp_server_factory(username="tuleap", password="s3cret pass")
    settings = smtp_settings(
        server, username="tuleap", password=Secret("s3cret pass"), auth_type=auth_type
    )
    transport = SmtpTransport(settings)
    try:
        send_notification(parse_notification(payload(2)), transport, SENDER, logger)
    finally:
        transport.close()
    received = server.wait_for(2)
    assert [message.login for message in received] == ["tuleap", "tuleap"]


@pytest.mark.parametrize("auth_type", ["plain", "login"])
def test_auth_with_a_wrong_password(
    smtp_server_factory: SmtpServerFactory, logger: logging.Logger, auth_type: str
) -> None:
    server = smtp_server_factory(username="tuleap", password="s3cret pass")
    settings = smtp_settings(
        server, username="tuleap", password=Secret("wrong pass"), auth_type=auth_type
    )
    transport = SmtpTransport(settings)
    notification = parse_notification(payload(1))
    with pytest.raises(PermanentMailError) as caught:
        transport.send(build_email(notification.mails[0], SENDER, notification))
    assert "login" in str(caught.value)
    assert "wrong pass" not in str(caught.value)
    with pytest.raises(PermanentFailure) as failure:
        send_notification(notification, transport, SENDER, logger)
    transport.close()
    assert failure.value.payload == notification.to_payload()
    assert server.messages == []


def test_no_auth_where_the_relay_wants_it(smtp_server_factory: SmtpServerFactory) -> None:
    server = smtp_server_factory(username="tuleap", password="s3cret pass")
    transport = SmtpTransport(smtp_settings(server))
    notification = parse_notification(payload(1))
    with pytest.raises(PermanentMailError, match="530"):
        transport.send(build_email(notification.mails[0], SENDER, notification))
    transport.close()


def test_the_kept_connection_survives_the_relay_closing_it(
    smtp_server: SmtpServer, logger: logging.Logger
) -> None:
    transport = SmtpTransport(smtp_settings(smtp_server))
    first, second = payload(1), payload(1)
    second["mails"][0]["subject"] = "second"
    send_notification(parse_notification(first), transport, SENDER, logger)
    smtp_server.stop()  # closes every connection, the kept one too
    smtp_server.start()
    send_notification(parse_notification(second), transport, SENDER, logger)
    transport.close()
    assert subjects(smtp_server) == ["[bug #42] mail 1", "second"]


def test_a_transport_can_be_used_again_after_close(smtp_server: SmtpServer) -> None:
    transport = SmtpTransport(smtp_settings(smtp_server))
    notification = parse_notification(payload(1))
    for _ in range(2):
        assert transport.send(build_email(notification.mails[0], SENDER, notification)) == []
        transport.close()
    transport.close()
    assert len(smtp_server.wait_for(2)) == 2


# --- the worker's handler ---------------------------------------------------------------


def test_the_handler_sends_from_sys_noreply(smtp_server: SmtpServer) -> None:
    settings = Settings(mail=smtp_settings(smtp_server))
    transport = SmtpTransport(settings.mail)
    job = Job(settings, logging.getLogger(LOGGER), "host/1", transport, TOPIC)
    handler = build_registry().resolve(TOPIC, payload(2))
    assert handler is handle_notification
    handler(payload(2), job)
    transport.close()
    received = smtp_server.wait_for(2)
    assert [parseaddr(str(message.message["From"])) for message in received] == [SENDER_PARSED] * 2
    assert [message.mail_from for message in received] == [SENDER_ADDRESS] * 2
    with pytest.raises(PayloadError, match=r"^payload\.mails"):
        handler({"mails": []}, job)


# --- sendmail and no transport ----------------------------------------------------------


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "sendmail"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_sendmail_gets_each_mail_on_its_standard_input(
    tmp_path: Path, logger: logging.Logger
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    # Each call writes its arguments and its standard input to files of its own.
    sendmail = script(tmp_path, f'echo "$@" > {out}/$$.args\ncat > {out}/$$.mail\n')
    notification = parse_notification(payload(2))
    send_notification(notification, SendmailTransport(sendmail), SENDER, logger)
    args = list(out.glob("*.args"))
    assert [path.read_text() for path in args] == ["-t -i\n", "-t -i\n"]
    mails = [
        BytesParser(policy=default).parsebytes(path.read_bytes()) for path in out.glob("*.mail")
    ]
    mails.sort(key=lambda message: str(message["Subject"]))
    assert len(mails) == 2
    for number, message in enumerate(mails, start=1):
        assert parseaddr(str(message["From"])) == SENDER_PARSED
        assert message["To"] == f"user{number}@example.com"
        assert message["Subject"] == f"[bug #42] mail {number}"
        assert message["Message-ID"]
        text, html = message.iter_parts()
        assert text.get_content() == f"Text of mail {number}\n"
        assert html.get_content() == f"<p>HTML of mail {number}</p>\n"


def test_sendmail_failing_is_transient(tmp_path: Path) -> None:
    sendmail = script(tmp_path, "cat > /dev/null\necho 'queue file write error' >&2\nexit 75\n")
    notification = parse_notification(payload(1))
    message = build_email(notification.mails[0], SENDER, notification)
    with pytest.raises(TransientMailError) as caught:
        SendmailTransport(sendmail).send(message)
    assert "exited with 75" in str(caught.value)
    assert "queue file write error" in str(caught.value)


def test_sendmail_exiting_1_retries_the_notification(
    tmp_path: Path, logger: logging.Logger
) -> None:
    sendmail = script(tmp_path, "cat > /dev/null\nexit 1\n")
    notification = parse_notification(payload(2))
    with pytest.raises(RetryLater) as caught:
        send_notification(notification, SendmailTransport(sendmail), SENDER, logger)
    assert caught.value.payload == notification.to_payload()


def test_sendmail_too_slow_is_transient(tmp_path: Path) -> None:
    sendmail = script(tmp_path, "exec sleep 30\n")
    notification = parse_notification(payload(1))
    message = build_email(notification.mails[0], SENDER, notification)
    with pytest.raises(TransientMailError, match="sendmail failed"):
        SendmailTransport(sendmail, timeout=0.3).send(message)


def test_sendmail_missing_is_permanent(tmp_path: Path) -> None:
    notification = parse_notification(payload(1))
    message = build_email(notification.mails[0], SENDER, notification)
    missing = str(tmp_path / "no" / "sendmail")
    with pytest.raises(PermanentMailError, match="not found"):
        SendmailTransport(missing).send(message)


def test_no_transport_is_permanent(logger: logging.Logger) -> None:
    notification = parse_notification(payload(2))
    transport = NoTransport("no mail transport: 'mailgun' (unknown: no mail is sent)")
    with pytest.raises(PermanentMailError, match="mailgun"):
        transport.send(build_email(notification.mails[0], SENDER, notification))
    with pytest.raises(PermanentFailure) as caught:
        send_notification(notification, transport, SENDER, logger)
    assert caught.value.payload == notification.to_payload()


def test_transport_for_each_setting() -> None:
    assert isinstance(transport_for(MailSettings(transport="sendmail")), SendmailTransport)
    sendmail = transport_for(MailSettings(transport="sendmail"), "/opt/sendmail")
    assert isinstance(sendmail, SendmailTransport) and sendmail.path == "/opt/sendmail"
    smtp = transport_for(MailSettings(transport="smtp", relay_host="mx.example", relay_port=2525))
    assert isinstance(smtp, SmtpTransport)
    for settings in (MailSettings(transport="smtp"), MailSettings(transport="mailgun")):
        transport: MailTransport = transport_for(settings)
        assert isinstance(transport, NoTransport)
        with pytest.raises(PermanentMailError, match="no mail transport"):
            transport.send(EmailMessage())


def test_notification_round_trips_through_its_payload() -> None:
    notification = Notification(7, 8, 9, (Mail(("a@example.com",), "s", "t"),))
    assert parse_notification(notification.to_payload()) == notification


# --- a relay that loses the line after the mail's end ------------------------------------


class HangUpOnOneMail:
    """A real SmtpTransport that tells the server to hang up on the ``number``-th mail it
    sends (1-based) once that mail is received whole, before any answer."""

    def __init__(self, inner: MailTransport, server: SmtpServer, number: int) -> None:
        self.inner = inner
        self.server = server
        self.number = number
        self.sent = 0

    def send(self, message: EmailMessage) -> list[str]:
        self.sent += 1
        if self.sent == self.number:
            self.server.hang_up(times=1)
        return self.inner.send(message)

    def close(self) -> None:
        self.inner.close()


def test_the_transport_leaves_a_mail_whose_answer_is_lost_to_its_caller(
    smtp_server: SmtpServer,
) -> None:
    """Issue 10, case 5: a disconnect while waiting for the answer to DATA was retried at
    once on a new connection, inside the transport. It says so instead (the caller sends
    it again later: issue 22)."""
    transport = SmtpTransport(smtp_settings(smtp_server))
    note = parse_notification(payload(2))
    transport.send(build_email(note.mails[0], SENDER, note))  # a kept connection
    smtp_server.hang_up(times=1)
    with pytest.raises(UncertainMailError, match="may have it"):
        transport.send(build_email(note.mails[1], SENDER, note))
    assert len(smtp_server.hung_up) == 1 and len(smtp_server.messages) == 1  # once
    # The transport goes on with a new connection for the next mail.
    transport.send(build_email(note.mails[0], SENDER, note))
    assert len(smtp_server.messages) == 2
    transport.close()


def test_a_mail_whose_answer_is_lost_is_sent_again_on_the_retry(
    smtp_server_factory: SmtpServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 22: a relay that died after a whole mail, before its 250, may not have stored
    it; the mail was counted as sent and never sent again: lost. Only the 250 passes it on
    (RFC 5321 §6.1): it is retried with the mails not yet sent — never one answered 250 —
    and said to be one that may come twice."""
    server = smtp_server_factory(username="tuleap", password="s3cret pass")
    settings = smtp_settings(server, username="tuleap", password=Secret("s3cret pass"))
    transport = HangUpOnOneMail(SmtpTransport(settings), server, 2)
    notification = parse_notification(payload(3))
    logger = logging.getLogger(LOGGER)
    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(RetryLater) as caught:
        send_notification(notification, transport, SENDER, logger)
    assert caught.value.payload == notification.to_payload(notification.mails[1:])
    assert caught.value.outcome == UNANSWERED  # counted apart in the stats
    assert "may come twice" in str(caught.value)
    assert subjects(server) == ["[bug #42] mail 1"]
    assert [message.subject for message in server.hung_up] == ["[bug #42] mail 2"]
    [warning] = [record.getMessage() for record in caplog.records if record.name == LOGGER]
    assert "artifact #42 changeset #1001: mail to user2@example.com" in warning
    assert "2 mail(s) left for a retry" in warning and "it may come twice" in warning
    assert "s3cret" not in caplog.text and "s3cret" not in str(caught.value)

    # The retry sends mail 2 again, then mail 3; mail 1 only ever once.
    send_notification(parse_notification(caught.value.payload), transport, SENDER, logger)
    transport.close()
    assert subjects(server) == ["[bug #42] mail 1", "[bug #42] mail 2", "[bug #42] mail 3"]


def test_a_stale_kept_connection_is_still_retried_once(smtp_server: SmtpServer) -> None:
    transport = SmtpTransport(smtp_settings(smtp_server))
    note = parse_notification(payload(2))
    transport.send(build_email(note.mails[0], SENDER, note))
    smtp_server.stop()  # the relay restarts: the kept connection is dead before MAIL FROM
    smtp_server.start()
    transport.send(build_email(note.mails[1], SENDER, note))
    assert len(smtp_server.messages) == 2
    transport.close()
