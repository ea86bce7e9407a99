"""An idle pool (its workers write their hash only when it changed, the pool lists its
live workers): thawed workers, a frozen pool, views after a Redis restart, retries moved
back when due. Real pools, a real Redis, no mocks."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from itertools import pairwise
from pathlib import Path

import redis

from tests.handlers_for_tests import RUNS_KEY
from tests.pool import (
    FAST_RETRY,
    Pool,
    nothing_pending,
    push_all,
    start_pool,
    wait_until,
    worker_heartbeats,
    write_config,
)
from tuitop.backends.redis import keys
from tuitop.backends.redis.queue import Queue, alive_in
from tuitop.backends.redis.snapshot import take_snapshot
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.message import encode


def _idle_worker(client: redis.Redis) -> tuple[str, int]:
    [worker_id] = wait_until(lambda: list(worker_heartbeats(client)), what="the worker")
    wait_until(lambda: worker_heartbeats(client)[worker_id]["state"] == "idle", what="it idles")
    time.sleep(0.5)  # blocked in its BLMOVE
    return worker_id, int(worker_heartbeats(client)[worker_id]["pid"])


def test_a_worker_thawed_after_its_list_was_recovered_does_not_run_what_it_held(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """A worker frozen (SIGSTOP) while blocked in its wait: a message pushed meanwhile is
    moved into its list by Redis. Its pool stops listing it a TTL after its last beat,
    another pool recovers its list (the message retried), it thaws. Its pool had vouched
    for it (status.listed_at) up to that moment, on the strength of a beat a TTL old: the
    worker took that for a recent sign of life, skipped the lease check, and ran the
    message that the retry ran again."""
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    pool = start_pool(
        pools, tmp_path, config, "--handlers", "tests.handlers_for_tests", *FAST_RETRY
    )
    worker_id, pid = _idle_worker(redis_client)
    os.kill(pid, signal.SIGSTOP)
    try:
        push_all(redis_client, [encode("test.count", {"id": "once"})])
        wait_until(
            lambda: redis_client.llen(keys.processing_list(worker_id)) == 1,
            what="the message in its list",
        )
        wait_until(lambda: not alive_in(redis_client, [worker_id])[0], 20, "it to be dead")
        # What another pool's silent scan does (recovery.py: unless_beating).
        recovered = Queue(redis_client).recover(worker_id, "stopped beating", unless_beating=True)
        assert recovered.total == 1
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: nothing_pending(redis_client), 20, what="everything done")
    time.sleep(1.0)
    runs = Counter(value.decode() for value in redis_client.lrange(RUNS_KEY, 0, -1))
    assert runs == {"once": 1}
    assert pool.stop() == 0


def test_a_pool_frozen_past_the_ttl_leaves_its_live_workers_alive(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """The pool's loop stalls (SIGSTOP here; a host swapping, a stuck call) while its idle
    workers run on: they wrote nothing of their own, their pool's hash expired, so every
    view showed them dead and any other pool recovered them (their leases gone: each
    stopped on its next message). A worker whose pool has not vouched for it lately says
    it is alive itself, as an orphan does."""
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    pool = start_pool(pools, tmp_path, config, "--handlers", "tests.handlers_for_tests")
    worker_id, _ = _idle_worker(redis_client)
    os.kill(pool.pid, signal.SIGSTOP)
    try:
        name = keys.pool(keys.pool_of(worker_id))
        wait_until(lambda: not redis_client.exists(name), 15, "the pool's hash to expire")
        time.sleep(1.5)
        assert alive_in(redis_client, [worker_id]) == [True]
        [view] = take_snapshot(redis_client).workers
        assert view.state != "dead"
        assert redis_client.exists(keys.worker_lease(worker_id))
    finally:
        os.kill(pool.pid, signal.SIGCONT)
    push_all(redis_client, [encode("test.count", {"id": "after"})])
    wait_until(lambda: nothing_pending(redis_client), 20, what="everything done")
    assert "recovered by another" not in pool.log()
    assert pool.stop() == 0


def test_views_see_the_pool_and_its_idle_workers_soon_after_redis_restarted_empty(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis
) -> None:
    """Redis restarted without persistence, quickly: every hash, the set of pools and of
    workers are gone. Idle workers write nothing unless asked (status.rebeat), the pool
    says its name once a minute: views must show them again within a few heartbeats."""
    config = write_config(tmp_path, port=redis_server.port, workers=2)
    pool = start_pool(pools, tmp_path, config)
    client = redis_server.client()
    wait_until(lambda: len(worker_heartbeats(client)) == 2, what="2 workers")
    time.sleep(3)  # settled: idle, nothing more to write
    redis_server.kill()
    redis_server.start()
    client = redis_server.client()

    def shown() -> bool:
        snapshot = take_snapshot(client)
        live = [view for view in snapshot.workers if view.state != "dead"]
        return len(snapshot.pools) == 1 and len(live) == 2

    wait_until(shown, 15, "the pool and its 2 workers shown again")
    assert pool.stop() == 0


def test_a_retry_is_moved_back_when_due_not_at_the_pools_next_heartbeat(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """The pool reads when the next retry is due only with its heartbeat (every 3 s when
    nothing changes): a retry scheduled by a worker in between waited for that read,
    up to 3 s past its time (a 5 s first retry: 60 % late)."""
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    pool = start_pool(
        pools, tmp_path, config, "--handlers", "tests.handlers_for_tests", "--retry-delay", "0.5"
    )
    _idle_worker(redis_client)
    late = []
    for n in range(2):
        push_all(redis_client, [encode("test.fail", {"id": n})])
        times: list[float] = []
        deadline = time.monotonic() + 20
        while redis_client.llen(keys.DEAD_LETTERS) <= n and time.monotonic() < deadline:
            runs = redis_client.lrange(RUNS_KEY, 0, -1).count(str(n).encode())
            if runs > len(times):
                times.append(time.monotonic())
            time.sleep(0.01)
        gaps = [b - a for a, b in pairwise(times)]
        # The delay doubles from 0.5 s: each run within 1.5 s of its time, not at the
        # pool's next heartbeat (a bound loose enough for a loaded CI machine).
        late += [round(gap - 0.5 * 2**k, 2) for k, gap in enumerate(gaps)]
    assert len(late) >= 4, late
    assert max(late) < 1.5, late
    assert pool.stop() == 0
