"""What views read: a snapshot of a real pool, at a cost that does not grow with the queue."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import redis

from tests.pool import Pool, wait_until, write_config
from tuitop.backends.redis import keys
from tuitop.backends.redis.queue import Queue
from tuitop.backends.redis.snapshot import take_snapshot
from tuitop.backends.redis.stats import flush_into
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.lanes import DEFAULT_LANE, LONG_LANE
from tuitop.message import encode
from tuitop.procmeter import ProcessMeter
from tuitop.stats import STATS_BUCKET_SECONDS, StatsBatch, bucket_start
from tuitop.tui.widgets import clock_time


def commands_for_a_snapshot(client: redis.Redis) -> int:
    before = int(client.info("stats")["total_commands_processed"])
    take_snapshot(client)
    after = int(client.info("stats")["total_commands_processed"])
    return after - before - 1  # the INFO that took the first reading


def test_empty_redis(redis_client: redis.Redis) -> None:
    snapshot = take_snapshot(redis_client)
    queue = snapshot.queue
    assert (queue.waiting, queue.delayed, queue.dead_letters, queue.processing) == (0, 0, 0, 0)
    assert queue.oldest_age is None and queue.next_retry_in is None
    assert snapshot.workers == () and snapshot.pools == ()
    assert snapshot.last_minute.end_to_end.count == 0


def test_oldest_age_is_the_message_taken_next(redis_client: redis.Redis) -> None:
    now = time.time()
    # LPUSH: the first pushed is the oldest, at the right end, taken next.
    redis_client.lpush(keys.QUEUE, encode("t", {}, enqueue_ts=now - 200))
    redis_client.lpush(keys.QUEUE, encode("t", {}, enqueue_ts=now - 1))
    snapshot = take_snapshot(redis_client, now=now)
    assert snapshot.queue.waiting == 2
    assert snapshot.queue.oldest_age == pytest.approx(200, abs=0.01)


def test_cost_is_the_same_with_10_and_100000_queued(redis_client: redis.Redis) -> None:
    redis_client.lpush(keys.QUEUE, *[encode("t", {"n": n}) for n in range(10)])
    small = commands_for_a_snapshot(redis_client)
    pipe = redis_client.pipeline(transaction=False)
    for start in range(0, 100_000, 5000):
        pipe.lpush(keys.QUEUE, *[encode("t", {"n": n}) for n in range(start, start + 5000)])
    pipe.execute()
    assert take_snapshot(redis_client).queue.waiting == 100_010
    assert commands_for_a_snapshot(redis_client) == small


def test_a_live_pool_seen_whole(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    config = write_config(tmp_path, port=redis_server.port, workers=2)
    pool = Pool(tmp_path, config, "--handlers", "tests.handlers_for_tests").start()
    pools.append(pool)
    redis_client.lpush(keys.QUEUE, *[encode("test.count", {"id": n}) for n in range(20)])
    redis_client.lpush(keys.QUEUE, encode("test.sleep", {"id": "s", "seconds": 3}))
    Queue(redis_client).push(b"not json")  # a dead letter
    snapshot = wait_until(
        lambda: (
            (s := take_snapshot(redis_client)).last_minute.counts.get("done", 0) >= 20
            and any(w.state == "busy" and w.topic == "test.sleep" for w in s.workers)
            and s.queue.dead_letters == 1
            and s
        ),
        what="a busy pool with finished jobs",
    )
    assert len(snapshot.workers) == 2
    busy = next(w for w in snapshot.workers if w.topic == "test.sleep")
    assert busy.state == "busy" and busy.holding == 1 and busy.pid > 0
    assert snapshot.queue.processing >= 1
    # Every job's wait by its lane (the notifications' own latency: none here).
    default_lane = snapshot.last_minute.lanes[DEFAULT_LANE]
    assert default_lane.done >= 20 and default_lane.wait.count >= 20
    assert default_lane.wait.p99 is not None
    assert snapshot.last_minute.end_to_end.count == 0
    # Per topic: what the workers finished, its wait and its run time.
    counted = snapshot.last_five_minutes.topics["test.count"]
    assert counted.count >= 20 and counted.failed == 0
    assert counted.wait.count == counted.run.count == counted.count
    assert counted.run.max is not None and counted.run.max < 3
    assert [lane.name for lane in snapshot.lanes] == [DEFAULT_LANE, LONG_LANE]
    (pool_view,) = snapshot.pools
    assert (pool_view.wanted, pool_view.running, pool_view.config_error) == (2, 2, "")
    assert pool_view.files == (str(config),)
    assert snapshot.config["workers"] == "2"
    assert pool.stop() == 0


def test_rates_come_from_the_last_complete_ten_seconds(redis_client: redis.Redis) -> None:
    now = time.time()
    previous = bucket_start(now) - STATS_BUCKET_SECONDS
    batch = StatsBatch()
    batch.outcome("done", 50)
    batch.outcome("enqueued", 60)
    pipe = redis_client.pipeline()
    flush_into(batch, pipe, previous + 1)
    pipe.execute()
    snapshot = take_snapshot(redis_client, now=now)
    assert snapshot.last_ten_seconds.rate("done") == 5.0
    assert snapshot.last_ten_seconds.rate("enqueued") == 6.0
    assert snapshot.last_minute.counts["done"] == 50


def test_hostile_heartbeats_never_break_a_snapshot_nor_the_process_meter(
    redis_client: redis.Redis,
) -> None:
    """Anyone who can write to the Redis can write a heartbeat: every view must go on."""
    here = socket.gethostname()
    redis_client.sadd(keys.WORKERS, "e/0#²", "e/1#99999999999999999999", "e/2#1")
    redis_client.hset(keys.heartbeat("e/2#1"), mapping={"host": here, "pid": "-5"})
    redis_client.sadd(keys.POOLS, "evil")
    redis_client.hset(keys.pool("evil"), mapping={"loaded_at": "1e300", "beat": "-1"})
    snapshot = ProcessMeter().measure(take_snapshot(redis_client))
    assert sorted(worker.pid for worker in snapshot.workers) == [0, 0, 1]
    [pool] = snapshot.pools
    assert (pool.loaded_at, pool.beat) == (0.0, 0.0)
    assert clock_time(1e300) == "?"


def test_set_members_that_are_not_utf8_are_left_out_of_a_snapshot(
    redis_client: redis.Redis,
) -> None:
    redis_client.sadd(keys.POOLS, b"\xff")
    redis_client.sadd(keys.WORKERS, b"\xfe/0#1")
    redis_client.zadd(keys.LANES, {b"\xfd": 1})
    snapshot = take_snapshot(redis_client)
    assert snapshot.pools == () and snapshot.workers == ()
