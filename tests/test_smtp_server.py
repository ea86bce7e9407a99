"""The recording SMTP server the tests send to: delivery, slowness, refusals and AUTH."""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Callable
from email.message import EmailMessage

import pytest

from tuitop.embedded.smtpserver import SmtpServer

SENDER = "noreply@tuleap.example"
RECIPIENTS = ["alice@example.org", "bob@example.org"]
TIMEOUT = 5.0

SmtpServerFactory = Callable[..., SmtpServer]


def notification(subject: str = "[tuleap #42] Bug: the build is red") -> EmailMessage:
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = ", ".join(RECIPIENTS)
    message["Subject"] = subject
    message.set_content("Hello,\nthe build is red.\n")
    return message


def connect(server: SmtpServer, timeout: float = TIMEOUT) -> smtplib.SMTP:
    return smtplib.SMTP(server.host, server.port, timeout=timeout)


def send(server: SmtpServer, message: EmailMessage | None = None) -> None:
    with connect(server) as client:
        client.send_message(message or notification(), SENDER, RECIPIENTS)


def test_a_sent_message_arrives_with_its_envelope(smtp_server: SmtpServer) -> None:
    before = time.time()
    send(smtp_server, notification("Café: état ✓"))
    [received] = smtp_server.wait_for(1, TIMEOUT)
    assert received.mail_from == SENDER
    assert received.recipients == tuple(RECIPIENTS)
    assert received.subject == "Café: état ✓"
    assert received.message["To"] == "alice@example.org, bob@example.org"
    assert received.message.get_content() == "Hello,\nthe build is red.\n"
    assert b"Subject: =?utf-8?" in received.raw
    assert before <= received.received_at <= time.time()
    assert received.login is None


def test_messages_are_kept_in_order(smtp_server: SmtpServer) -> None:
    with connect(smtp_server) as client:
        for number in range(3):
            client.send_message(notification(f"message {number}"), SENDER, RECIPIENTS)
    subjects = [message.subject for message in smtp_server.wait_for(3, TIMEOUT)]
    assert subjects == ["message 0", "message 1", "message 2"]
    smtp_server.clear()
    assert smtp_server.messages == []


def test_wait_for_gives_up_after_the_timeout(smtp_server: SmtpServer) -> None:
    send(smtp_server)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"1 of 2 messages accepted within 0\.2 s"):
        smtp_server.wait_for(2, timeout=0.2)
    assert time.monotonic() - started < 2


def test_each_test_gets_its_own_server(smtp_server_factory: SmtpServerFactory) -> None:
    first, second = smtp_server_factory(), smtp_server_factory()
    assert first.port != second.port
    send(first)
    first.wait_for(1, TIMEOUT)
    assert second.messages == []


def test_stop_closes_the_port_and_start_reopens_it(smtp_server: SmtpServer) -> None:
    port = smtp_server.port
    send(smtp_server)
    smtp_server.stop()
    smtp_server.stop()  # idempotent
    assert not smtp_server.running
    with socket.socket() as probe:
        assert probe.connect_ex((smtp_server.host, port)) != 0
    smtp_server.start()
    assert smtp_server.port == port
    send(smtp_server)
    assert len(smtp_server.wait_for(2, TIMEOUT)) == 2


# --- slow ----------------------------------------------------------------------------------


def test_slow_server_answers_data_after_the_delay(
    smtp_server_factory: SmtpServerFactory,
) -> None:
    server = smtp_server_factory(delay=0.5)
    started = time.monotonic()
    send(server)
    assert time.monotonic() - started >= 0.5
    assert len(server.messages) == 1


def test_a_sender_that_leaves_during_the_delay_abandons_its_message(
    smtp_server_factory: SmtpServerFactory,
) -> None:
    # What a worker killed in the middle of sending looks like from the server's side.
    server = smtp_server_factory(delay=3.0)
    client = connect(server, timeout=0.2)
    client.ehlo()
    client.mail(SENDER)
    client.rcpt(RECIPIENTS[0])
    with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
        client.data(notification().as_bytes())
    client.close()
    deadline = time.monotonic() + TIMEOUT
    while not server.abandoned and time.monotonic() < deadline:
        time.sleep(0.01)
    [abandoned] = server.abandoned
    assert abandoned.recipients == (RECIPIENTS[0],)
    assert server.messages == []


def test_delay_can_change_while_running(smtp_server: SmtpServer) -> None:
    smtp_server.set_delay(1.0)
    started = time.monotonic()
    send(smtp_server)
    assert time.monotonic() - started >= 1.0
    smtp_server.set_delay(0)
    started = time.monotonic()
    send(smtp_server)
    assert time.monotonic() - started < 1.0


# --- refusing ------------------------------------------------------------------------------


def test_temporary_refusal_then_acceptance(smtp_server_factory: SmtpServerFactory) -> None:
    server = smtp_server_factory(refusal="451 4.3.0 Try again later", refusals=2)
    for _ in range(2):
        with pytest.raises(smtplib.SMTPDataError) as refused:
            send(server)
        assert refused.value.smtp_code == 451
    send(server)
    assert len(server.refused) == 2
    assert len(server.wait_for(1, TIMEOUT)) == 1


def test_permanent_refusal_until_accept(smtp_server: SmtpServer) -> None:
    smtp_server.refuse("550 5.7.1 Rejected")
    for _ in range(3):
        with pytest.raises(smtplib.SMTPDataError) as refused:
            send(smtp_server)
        assert refused.value.smtp_code == 550
        assert refused.value.smtp_error == b"5.7.1 Rejected"
    smtp_server.accept()
    send(smtp_server)
    assert (len(smtp_server.refused), len(smtp_server.messages)) == (3, 1)


@pytest.mark.parametrize("reply", ["250 OK", "45", "4xx nope", "451-continued", ""])
def test_a_refusal_must_be_a_failure_reply(smtp_server: SmtpServer, reply: str) -> None:
    with pytest.raises(ValueError, match="4xx or 5xx"):
        smtp_server.refuse(reply)


# --- AUTH ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_with_the_right_password(
    smtp_server_factory: SmtpServerFactory, mechanism: str
) -> None:
    server = smtp_server_factory(username="tuleap", password="s3cret")
    with connect(server) as client:
        client.ehlo()
        assert "PLAIN" in client.esmtp_features["auth"]
        assert "LOGIN" in client.esmtp_features["auth"]
        client.user, client.password = "tuleap", "s3cret"
        authenticator = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        code, _ = client.auth(mechanism, authenticator)
        assert code == 235
        client.send_message(notification(), SENDER, RECIPIENTS)
    [received] = server.wait_for(1, TIMEOUT)
    assert received.login == "tuleap"


@pytest.mark.parametrize(("username", "password"), [("tuleap", "wrong"), ("other", "s3cret")])
def test_auth_with_wrong_credentials_fails(
    smtp_server_factory: SmtpServerFactory, username: str, password: str
) -> None:
    server = smtp_server_factory(username="tuleap", password="s3cret")
    with connect(server) as client, pytest.raises(smtplib.SMTPAuthenticationError) as refused:
        client.login(username, password)
    assert refused.value.smtp_code == 535


def test_sending_without_auth_is_refused_when_auth_is_set(
    smtp_server_factory: SmtpServerFactory,
) -> None:
    server = smtp_server_factory(username="tuleap", password="s3cret")
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        send(server)
    assert refused.value.smtp_code == 530
    assert server.messages == []


def test_no_auth_is_offered_without_credentials(smtp_server: SmtpServer) -> None:
    with connect(smtp_server) as client:
        client.ehlo()
        assert not client.has_extn("auth")


def test_auth_needs_both_username_and_password() -> None:
    with pytest.raises(ValueError, match="both"):
        SmtpServer(username="tuleap")
