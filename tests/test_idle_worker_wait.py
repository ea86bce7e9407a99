"""The idle worker's wait without a take (an idle worker of the default lane waits again
at once after an empty wait): a stranded message still given back, lane bursts routed in
batches, stats written within a second, back after a Redis restart. Real Redis,
in-process workers (tests.test_worker)."""

from __future__ import annotations

import time

import pytest
import redis

from tests.workers import make_worker
from tuitop.backends.errors import StoreUnavailable
from tuitop.backends.redis import keys
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.mail import NoTransport
from tuitop.message import encode
from tuitop.registry import build_registry
from tuitop.worker.loop import VAIN_WAITS_PER_TAKE


def calls(client: redis.Redis, *names: str) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in names)


def test_a_message_stranded_in_an_idle_workers_list_is_still_given_back(
    redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """Found: the take that gives back what sits in a worker's list unknown to it (a reply
    it never got) ran only after a busy spell; now every VAIN_WAITS_PER_TAKE-th idle wait
    too."""
    worker = make_worker(redis_server)
    worker.channel.start(worker.id)
    assert worker._next_batch()[0] == []  # idle: a take, a wait in vain
    stranded = encode("tuitop.noop", {"stranded": True})
    redis_client.lpush(keys.processing_list(worker.id), stranded)
    got: list[bytes] = []
    for _ in range(VAIN_WAITS_PER_TAKE + 2):  # block_timeout 0.2 s each
        got += [message.raw for message in worker._next_batch()[0]]
        if got:
            break
    assert got == [stranded]


def test_a_burst_of_lane_messages_is_routed_in_batches(
    redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """Found: a message a wait routed to its lane counted as a wait in vain, so the
    next turn waited again instead of taking: a burst of 200 lane messages cost 401
    commands, one message a round trip (21 with the take, which routes in batches)."""
    worker = make_worker(redis_server)
    worker.channel.start(worker.id)
    worker._job_time = 0.0005  # a worker that ran fast jobs: batches of 32
    assert worker._next_batch()[0] == []
    count = 200
    jira = [encode("tuleap.tracker.creation.jira", {"n": n}) for n in range(count)]
    redis_client.lpush(keys.QUEUE, *jira)
    before = calls(redis_client, "blmove", "evalsha", "eval")
    while redis_client.llen(keys.QUEUE):
        assert worker._next_batch()[0] == []
    assert redis_client.llen(keys.lane_list("latency_15m")) == count
    assert calls(redis_client, "blmove", "evalsha", "eval") - before < count // 4


def test_the_stats_of_an_idle_worker_are_written_within_a_second(
    redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """Checked: the wait without a take still writes the stats when due."""
    worker = make_worker(redis_server)
    worker.channel.start(worker.id)
    worker.registry = build_registry(())
    worker.mail = NoTransport("test")
    assert worker._next_batch()[0] == []
    assert worker._next_batch()[0] == []  # without a take now
    redis_client.lpush(keys.QUEUE, encode("tuitop.noop", {"n": 1}))
    batch, source = worker._next_batch()
    assert len(batch) == 1
    worker._run_batch(batch, source)
    assert worker.batch.stats.fields
    deadline = time.monotonic() + 2.5
    while worker.batch.stats.fields and time.monotonic() < deadline:
        worker._next_batch()
    assert not worker.batch.stats.fields
    assert redis_client.llen(keys.processing_list(worker.id)) == 0


def test_an_idle_worker_is_back_after_a_redis_restart(redis_server: EmbeddedRedis) -> None:
    """Checked: waiting without a take when Redis went away and came back (its scripts
    gone) still routes lane messages and takes the others."""
    worker = make_worker(redis_server)
    worker.channel.start(worker.id)
    assert worker._next_batch()[0] == []
    assert worker._vain_waits
    redis_server.stop()
    with pytest.raises(StoreUnavailable):
        worker._next_batch()
    redis_server.start()
    client = redis_server.client()
    worker.channel.ping()
    worker._settle()
    jira = encode("tuleap.tracker.creation.jira", {"n": 1})
    noop = encode("tuitop.noop", {"n": 2})
    client.lpush(keys.QUEUE, jira, noop)
    assert worker._next_batch()[0] == []  # routed
    assert [message.raw for message in worker._next_batch()[0]] == [noop]
    assert client.lrange(keys.lane_list("latency_15m"), 0, -1) == [jira]
