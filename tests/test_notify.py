"""The producer side: a notification is queued when the async scope covers its project,
sent inline otherwise, and sent inline too when the queue cannot be reached."""

from __future__ import annotations

import logging
import stat
import time
from pathlib import Path
from typing import cast

import pytest
import redis

from tests.pool import wait_until
from tests.proxy import ReplyLosingProxy
from tuitop.backends.redis import keys
from tuitop.backends.redis.connection import connect
from tuitop.backends.redis.queue import Queue
from tuitop.backends.redis.stats import read_buckets
from tuitop.backends.redis.view import RedisAdmin
from tuitop.config import AsyncScope, MailSettings, RedisSettings, Settings, load_config
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.embedded.smtpserver import SmtpServer
from tuitop.handlers import Job
from tuitop.mail import SmtpTransport
from tuitop.message import decode
from tuitop.notification import TOPIC, Mail, Notification
from tuitop.notify import QUEUED, SENT, NotificationError, Notifier
from tuitop.registry import build_registry
from tuitop.stats import summarize

NOREPLY = "noreply@tuleap.example"
FALLBACK = "[Notification] Unable to queue notification for 42, fallback to online notif"


def notification(project_id: int = 101, mails: int = 2) -> Notification:
    return Notification(
        project_id=project_id,
        artifact_id=42,
        changeset_id=1001,
        mails=tuple(
            Mail((f"user{n}@example.com",), f"[bug #42] mail {n}", f"text {n}\n", f"<p>{n}</p>")
            for n in range(1, mails + 1)
        ),
    )


def make_settings(
    redis_server: EmbeddedRedis | None, smtp_server: SmtpServer, scope: AsyncScope
) -> Settings:
    return Settings(
        redis=RedisSettings("127.0.0.1", redis_server.port) if redis_server else RedisSettings(),
        backend_workers=1,
        async_scope=scope,
        mail=MailSettings(
            transport="smtp",
            noreply=NOREPLY,
            relay_host=smtp_server.host,
            relay_port=smtp_server.port,
        ),
    )


def queued(client: redis.Redis) -> list[bytes]:
    return cast(list[bytes], client.lrange(keys.QUEUE, 0, -1))


def subjects(server: SmtpServer) -> list[str]:
    return [message.subject for message in server.messages]


def test_a_covered_project_is_queued(
    tmp_path: Path,
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    smtp_server: SmtpServer,
) -> None:
    config = tmp_path / "local.inc"
    config.write_text(
        "<?php\n"
        "$redis_server = '127.0.0.1';\n"
        f"$redis_port = {redis_server.port};\n"
        "$sys_async_emails = '101, 102';\n"
        f"$sys_noreply = '{NOREPLY}';\n"
        "$email_transport = 'smtp';\n"
        f"$email_relayhost = '{smtp_server.host}:{smtp_server.port}';\n"
    )
    settings = load_config([str(config)]).settings
    assert settings.async_scope == AsyncScope(project_ids=frozenset({101, 102}))
    notifier = Notifier(settings)
    sent = notification(101)
    before = time.time()
    try:
        assert notifier.notify(sent) == QUEUED
    finally:
        notifier.close()
    [raw] = queued(redis_client)
    message = decode(raw)
    assert message.problem is None
    assert message.topic == TOPIC == "tuleap.tracker.artifact"
    assert message.payload == sent.to_payload()
    assert message.queued_total == 0
    assert before <= message.enqueue_ts <= time.time()
    assert smtp_server.messages == []
    counts = summarize(read_buckets(redis_client, time.time(), 60), 60).counts
    assert counts == {"enqueued": 1}

    # A worker then sends it as it was queued.
    taken = Queue(redis_client).take("host/1", 1)
    assert taken == [raw]
    transport = SmtpTransport(settings.mail)
    job = Job(settings, logging.getLogger("tests.notify"), "host/1", transport, TOPIC)
    message = decode(taken[0])
    handler = build_registry().resolve(message.topic, message.payload)
    assert handler is not None
    handler(message.payload, job)
    transport.close()
    assert subjects(smtp_server) == ["[bug #42] mail 1", "[bug #42] mail 2"]


def test_a_project_out_of_scope_is_sent_inline(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, smtp_server: SmtpServer
) -> None:
    settings = make_settings(redis_server, smtp_server, AsyncScope(project_ids=frozenset({101})))
    notifier = Notifier(settings)
    try:
        assert notifier.notify(notification(102)) == SENT
        assert notifier.notify(notification(103, mails=1)) == SENT
    finally:
        notifier.close()
    assert subjects(smtp_server) == ["[bug #42] mail 1", "[bug #42] mail 2", "[bug #42] mail 1"]
    assert [message.mail_from for message in smtp_server.messages] == [NOREPLY] * 3
    assert queued(redis_client) == []
    assert redis_client.dbsize() == 0  # not even counted: the queue was not used


def test_no_async_scope_sends_everything_inline(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, smtp_server: SmtpServer
) -> None:
    notifier = Notifier(make_settings(redis_server, smtp_server, AsyncScope()))
    assert notifier.notify(notification(101)) == SENT
    notifier.close()
    assert len(smtp_server.messages) == 2
    assert queued(redis_client) == []


def test_all_projects_are_queued(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, smtp_server: SmtpServer
) -> None:
    notifier = Notifier(make_settings(redis_server, smtp_server, AsyncScope(all_projects=True)))
    for project_id in (1, 101, 99999):
        assert notifier.notify(notification(project_id)) == QUEUED
    notifier.close()
    projects = [decode(raw).payload["project_id"] for raw in reversed(queued(redis_client))]
    assert projects == [1, 101, 99999]
    assert smtp_server.messages == []


def test_redis_down_falls_back_to_sending_inline(
    redis_server: EmbeddedRedis,
    smtp_server: SmtpServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(redis_server, smtp_server, AsyncScope(project_ids=frozenset({101})))
    redis_server.stop()
    notifier = Notifier(settings)
    with caplog.at_level(logging.WARNING, logger="tuitop.notify"):
        assert notifier.notify(notification(101)) == SENT
    notifier.close()
    assert subjects(smtp_server) == ["[bug #42] mail 1", "[bug #42] mail 2"]
    [warning] = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert warning.name == "tuitop.notify"
    text = warning.getMessage()
    assert text.startswith(FALLBACK)
    assert f"Redis at 127.0.0.1:{redis_server.port} is unreachable" in text


def test_redis_crashing_between_notifications(
    redis_server: EmbeddedRedis,
    smtp_server: SmtpServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(redis_server, smtp_server, AsyncScope(all_projects=True))
    notifier = Notifier(settings)
    with caplog.at_level(logging.WARNING, logger="tuitop.notify"):
        assert notifier.notify(notification(101)) == QUEUED
        redis_server.kill()  # the notifier's kept connection dies with it
        assert notifier.notify(notification(101, mails=1)) == SENT
        redis_server.start()  # empty again: no appendonly
        assert notifier.notify(notification(101)) == QUEUED
    notifier.close()
    assert subjects(smtp_server) == ["[bug #42] mail 1"]
    assert [record.getMessage()[: len(FALLBACK)] for record in caplog.records] == [FALLBACK]
    client = redis_server.client()
    assert len(queued(client)) == 1
    client.close()


def test_redis_not_configured_falls_back(
    smtp_server: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("tests.notify.frontend")
    settings = make_settings(None, smtp_server, AsyncScope(all_projects=True))
    notifier = Notifier(settings, logger=logger)
    with caplog.at_level(logging.WARNING, logger="tests.notify.frontend"):
        assert notifier.notify(notification(7)) == SENT
    notifier.close()
    assert len(smtp_server.messages) == 2
    [warning] = caplog.records
    assert warning.name == "tests.notify.frontend"
    assert warning.getMessage().startswith(FALLBACK)
    assert "$redis_server is empty" in warning.getMessage()


@pytest.mark.parametrize(
    ("reply", "code"), [("550 5.7.1 Rejected", "550"), ("451 4.3.0 Later", "451")]
)
def test_an_inline_failure_raises(
    redis_server: EmbeddedRedis, smtp_server: SmtpServer, reply: str, code: str
) -> None:
    settings = make_settings(redis_server, smtp_server, AsyncScope())
    smtp_server.refuse(reply)
    notifier = Notifier(settings)
    sent = notification(101)
    with pytest.raises(NotificationError) as caught:
        notifier.notify(sent)
    notifier.close()
    assert code in str(caught.value)
    assert caught.value.payload == sent.to_payload()  # no mail went out
    assert smtp_server.messages == []


def test_redis_down_and_the_relay_refusing_raises(
    redis_server: EmbeddedRedis, smtp_server: SmtpServer
) -> None:
    settings = make_settings(redis_server, smtp_server, AsyncScope(all_projects=True))
    redis_server.stop()
    smtp_server.stop()
    notifier = Notifier(settings)
    sent = notification(101)
    with pytest.raises(NotificationError, match="cannot reach the relay") as caught:
        notifier.notify(sent)
    notifier.close()
    assert caught.value.payload == sent.to_payload()


def test_inline_through_sendmail(tmp_path: Path, smtp_server: SmtpServer) -> None:
    out = tmp_path / "out"
    out.mkdir()
    sendmail = tmp_path / "sendmail"
    sendmail.write_text(f'#!/bin/sh\ncat > "{out}/$$.mail"\n')
    sendmail.chmod(sendmail.stat().st_mode | stat.S_IXUSR)
    settings = Settings(mail=MailSettings(transport="sendmail", noreply=NOREPLY))
    notifier = Notifier(settings, sendmail=str(sendmail))
    assert notifier.notify(notification(101)) == SENT
    notifier.close()
    written = sorted(path.read_bytes() for path in out.iterdir())
    assert len(written) == 2
    assert all(f"From: {NOREPLY}".encode() in mail for mail in written)
    assert smtp_server.messages == []


@pytest.mark.parametrize("recipient", ["not an address", "a@example.com\r\nBcc: x@evil"])
def test_a_malformed_notification_is_refused_before_it_is_queued(
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    smtp_server: SmtpServer,
    recipient: str,
) -> None:
    notifier = Notifier(make_settings(redis_server, smtp_server, AsyncScope(all_projects=True)))
    bad = Notification(101, 42, 1001, (Mail((recipient,), "subject", "text"),))
    with pytest.raises(NotificationError, match=r"payload\.mails\[0\]\.to\[0\]"):
        notifier.notify(bad)
    notifier.close()
    assert queued(redis_client) == []
    assert smtp_server.messages == []


def test_the_producer_api_is_importable_from_the_package() -> None:
    import tuitop

    assert tuitop.Notifier is Notifier
    assert tuitop.Notification is Notification
    assert tuitop.Mail is Mail
    with pytest.raises(AttributeError):
        tuitop.NoSuchThing  # noqa: B018


def settings_through(
    proxy: ReplyLosingProxy, redis_server: EmbeddedRedis, smtp_server: SmtpServer
) -> Settings:
    """Every project queued, through ``proxy`` to the test's Redis."""
    settings = make_settings(redis_server, smtp_server, AsyncScope(all_projects=True))
    return Settings(
        redis=RedisSettings("127.0.0.1", proxy.port),
        backend_workers=1,
        async_scope=settings.async_scope,
        mail=settings.mail,
    )


def test_a_push_whose_reply_is_lost_is_queued_once_and_not_sent_inline(
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    smtp_server: SmtpServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 10, case 8: a lost LPUSH reply made the Notifier send inline, while the
    message was queued too: every mail twice."""
    proxy = ReplyLosingProxy(redis_server.port)
    settings = settings_through(proxy, redis_server, smtp_server)
    notifier = Notifier(settings)
    try:
        assert notifier.notify(notification()) == QUEUED  # the line works
        proxy.lose_reply_to(b"LPUSH")
        with caplog.at_level(logging.WARNING, logger="tuitop.notify"):
            assert notifier.notify(notification(mails=1)) == QUEUED
        assert proxy.lost == 1
        assert len(queued(redis_client)) == 2  # once each
        assert smtp_server.messages == []  # and nothing inline
        assert "was lost, but it is queued" in caplog.text
    finally:
        notifier.close()
        proxy.close()


def test_a_push_that_never_reached_redis_is_sent_inline(
    redis_server: EmbeddedRedis, smtp_server: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(redis_server, smtp_server, AsyncScope(all_projects=True))
    notifier = Notifier(settings)
    redis_server.kill()  # gone before the push: it cannot have been queued
    try:
        with caplog.at_level(logging.WARNING, logger="tuitop.notify"):
            assert notifier.notify(notification()) == SENT
        assert len(smtp_server.wait_for(2)) == 2
        assert FALLBACK in caplog.text
    finally:
        notifier.close()


def test_a_push_that_timed_out_may_land_after_the_question_and_says_so(
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    smtp_server: SmtpServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A push still on its way when the marker is asked about lands after the answer:
    sent inline and queued too. It cannot be told then; the log says it may come twice."""
    proxy = ReplyLosingProxy(redis_server.port)
    settings = settings_through(proxy, redis_server, smtp_server)
    short = RedisAdmin(settings.redis, connect(settings.redis, socket_timeout=0.5))
    notifier = Notifier(settings, queue=short)
    try:
        notifier.scope()  # read while the line is good
        proxy.delay_request(b"LPUSH", 2.0)
        with caplog.at_level(logging.WARNING, logger="tuitop.notify"):
            assert notifier.notify(notification(mails=1)) == SENT
        assert "the push timed out and may still land: it may come twice" in caplog.text
        assert len(smtp_server.wait_for(1)) == 1
        wait_until(lambda: len(queued(redis_client)) == 1, what="the late push landing")
    finally:
        notifier.close()
        proxy.close()
