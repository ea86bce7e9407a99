"""Acks sent with the next take (never taken for a recovery when the take failed), the
pool's mailbox watch (no watch left on a Redis the pool left), and a trickle counted
within a second: each against real servers, each a finding of a second reader."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from tests.conftest import RedisServerFactory
from tests.pool import Pool, ctl, running, start_named_pool, wait_until, write_config
from tests.workers import make_worker, take
from tuitop.backends.errors import StoreError
from tuitop.backends.redis import keys
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.message import encode


def test_acks_made_before_a_take_that_failed_are_not_taken_for_a_recovery(
    redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """The acks go in one round trip with the next take: Redis may make the acks and
    refuse the take (here: the queue's key of the wrong type, written by something else).
    The worker acked them again once the take worked, found them gone, and stopped,
    believing its list had been recovered by another pool (an ERROR line, its next batch
    left unrun)."""
    worker = make_worker(redis_server)
    raws = [encode("tuitop.noop", {"n": n}) for n in range(6)]
    redis_client.lpush(keys.QUEUE, *raws)
    done = take(worker, 3)
    worker._pending_acks.extend(done)  # they ran
    left = redis_client.lrange(keys.QUEUE, 0, -1)
    redis_client.delete(keys.QUEUE)
    redis_client.set(keys.QUEUE, "not a list")
    with pytest.raises(StoreError, match="WRONGTYPE"):  # tuitop's own, said by Redis
        worker._next_batch()
    redis_client.delete(keys.QUEUE)
    redis_client.rpush(keys.QUEUE, *left)
    processing = keys.processing_list(worker.id)
    assert redis_client.llen(processing) == 0  # the acks were made
    worker._settle()  # what the worker's loop does once Redis answers again
    assert worker.lost == ""
    batch, _ = worker._next_batch()
    assert batch
    assert not worker._list_lost(len(batch))


def watching(client: redis.Redis, pool: str) -> int:
    name = f"tuitop:pool:{pool}:mailbox"
    return sum(1 for entry in client.client_list() if entry["name"] == name)


def test_a_pool_moved_to_another_redis_leaves_no_watch_on_the_old_one(
    tmp_path: Path,
    pools: list[Pool],
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    redis_server_factory: RedisServerFactory,
) -> None:
    """The watch follows the store: its connection to the old Redis is closed, one to the
    new one opened, and commands through the new one are answered at once."""
    config = write_config(tmp_path, port=redis_server.port, workers=2)
    pool = start_named_pool(pools, tmp_path, config, "alpha")
    running(redis_client, "alpha", 2)
    wait_until(lambda: watching(redis_client, "alpha") == 1, what="the watch on the old Redis")
    other = redis_server_factory()
    config.write_text(config.read_text().replace(f"= {redis_server.port};", f"= {other.port};"))
    running(other.client(), "alpha", 2)
    wait_until(lambda: watching(other.client(), "alpha") == 1, what="the watch on the new Redis")
    wait_until(lambda: watching(redis_client, "alpha") == 0, what="no watch on the old Redis")
    code, out = ctl(config, "workers", "3")
    assert code == 0, out
    running(other.client(), "alpha", 3)
    assert "Unexpected error" not in pool.log(), pool.log()
    assert pool.stop() == 0


def done_counted(client: redis.Redis) -> int:
    buckets = client.keys(keys.stats_bucket(0).rsplit(":", 1)[0] + ":*")
    return sum(int(client.hget(bucket, "done") or 0) for bucket in buckets)


def test_a_trickle_is_counted_within_about_a_second_and_each_message_runs_once(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """Stats of a worker that went idle are written when due (its wait cut to then), not
    never; each message's ack goes with the next take, none is left in a processing list,
    and SIGTERM right after a batch loses no ack (nothing runs twice)."""
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    pool = start_named_pool(pools, tmp_path, config, "alpha")
    running(redis_client, "alpha", 1)
    for n in range(5):
        redis_client.lpush(keys.QUEUE, encode("test.count", {"id": n}))
        time.sleep(0.3)
    wait_until(lambda: done_counted(redis_client) == 5, what="5 counted", timeout=3.0)
    assert redis_client.llen("test:runs") == 5
    wait_until(
        lambda: (
            not redis_client.keys(keys.processing_list("*"))
            or all(
                redis_client.llen(key) == 0 for key in redis_client.keys(keys.processing_list("*"))
            )
        ),
        what="acked",
    )
    redis_client.lpush(keys.QUEUE, *[encode("test.count", {"id": n}) for n in range(5, 50)])
    assert pool.stop() == 0
    records = redis_client.lrange("test:runs", 0, -1)
    left = redis_client.llen(keys.QUEUE)
    assert len(records) == len(set(records)) and len(records) + left == 50
