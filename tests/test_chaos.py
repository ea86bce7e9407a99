"""The chaos campaign's short run (bench/chaos.py): two real pools on one Redis, a stream
of notifications through a real SMTP server, and meanwhile workers killed every 2 s,
config saves every 5 s, Redis killed and restarted, the SMTP server down 10 s, a whole
host killed and started again, a worker frozen past its heartbeat. Nothing may be lost,
and nothing run twice but what a worker held as it was killed, nor a mail received twice
unless the pool said it may come twice."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import redis

from bench.chaos import (
    MAY_COME_TWICE,
    RELAY_FAILED,
    RESENT,
    Campaign,
    explain_duplicates,
    notification_message,
    run_campaign,
)
from tests.proxy import ReplyLosingProxy
from tuitop.backends.redis import keys
from tuitop.config import MailSettings
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.embedded.smtpserver import SmtpServer
from tuitop.handlers import RetryLater
from tuitop.mail import SmtpTransport
from tuitop.message import decode
from tuitop.notification import parse_notification, send_notification


@pytest.mark.timeout(600)
def test_the_short_chaos_run_loses_nothing() -> None:
    report = run_campaign(messages=3000, rate=40.0)
    assert report.lost == [], f"lost: {report.lost[:20]} (events: {report.events})"
    assert report.delivered + report.dead == report.pushed
    # Run twice only what a worker held as it was killed or frozen, or a mail sent again
    # after the relay's answer was lost; dead-lettered only
    # what kills and the relay's outage cost Tuleap's 3 tries.
    assert report.unexplained == [], {a: report.duplicates[a] for a in report.unexplained}
    assert report.unexplained_dead == [], {
        a: (report.dead_reasons[a], report.held.get(a), report.relay_failed.get(a))
        for a in report.unexplained_dead
    }
    kinds = " ".join(event.what for event in report.events)
    for happened in ("SIGKILL worker", "config saved", "Redis killed", "SMTP server down",
                     "whole host killed", "frozen (SIGSTOP)"):  # fmt: skip
        assert happened in kinds, happened


class _ThroughProxy:
    """Stands for the campaign's EmbeddedRedis: its clients go through ``proxy``."""

    def __init__(self, proxy: ReplyLosingProxy) -> None:
        self.proxy = proxy

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.proxy.port, **options)


def _produce_one(tmp_path: Path, redis_server: EmbeddedRedis, lose: bytes) -> int:
    """The campaign's producer pushes one notification through a proxy that loses the
    reply to the request holding ``lose``; returns how many copies are in the queue."""
    proxy = ReplyLosingProxy(redis_server.port)
    try:
        campaign = Campaign(tmp_path, messages=1, rate=1000.0, seed=7)
        campaign.redis = _ThroughProxy(proxy)  # type: ignore[assignment]
        proxy.lose_reply_to(lose)
        campaign._producing.set()
        campaign.produce()
        assert proxy.lost == 1
    finally:
        proxy.close()
    client = redis_server.client()
    try:
        return int(client.llen(keys.QUEUE))
    finally:
        client.close()


def test_the_campaigns_producer_pushes_once_when_a_push_reply_is_lost(
    tmp_path: Path, redis_server: EmbeddedRedis
) -> None:
    """Redis killed -9 after it ran a push, before its reply: the push is not run again
    by the client on its own (redis-py's default retries did: a duplicate no kill
    explains, artifact 750 of the short run, pushed as Redis was killed)."""
    assert _produce_one(tmp_path, redis_server, b"LPUSH") == 1


def test_the_campaign_reads_the_pools_line_for_a_mail_that_may_come_twice(
    smtp_server: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The relay goes down after a mail's end, before its answer: the line the pool logs
    for it is the one the campaign looks for (a resend, and a try the relay cut short)."""
    settings = MailSettings(
        transport="smtp", noreply="noreply@chaos.example", relay_host=smtp_server.host,
        relay_port=smtp_server.port,
    )  # fmt: skip
    transport = SmtpTransport(settings)
    notification = parse_notification(decode(notification_message(750)).payload)
    smtp_server.hang_up(times=1)
    with caplog.at_level(logging.WARNING, logger="chaos"), pytest.raises(RetryLater):
        send_notification(notification, transport, settings.noreply, logging.getLogger("chaos"))
    transport.close()
    assert MAY_COME_TWICE.findall(caplog.text) == ["750"]
    assert RELAY_FAILED.findall(caplog.text) == ["750"]


def test_a_mail_received_twice_is_explained_only_by_a_kill_after_it_or_a_resend() -> None:
    first, second = 100.0, 101.0
    deliveries = {1: [first], 2: [first, second], 3: [first, second], 4: [first, second]}
    held = {3: [(first + 0.5, "SIGKILL worker pid 7")], 4: [(first - 0.5, "SIGKILL worker pid 8")]}
    resent = {1: 1, 2: 1}
    assert explain_duplicates(deliveries, held, resent) == {
        2: [RESENT],  # the pool said it may come twice
        3: ["SIGKILL worker pid 7"],  # held as it was killed, after it was mailed
        4: [],  # killed before it was mailed, no resend: unexplained
    }
    # Received three times, one resend said: one delivery is not explained.
    assert explain_duplicates({2: [first, second, second + 1]}, {}, resent) == {2: []}
