"""A worker's own mechanisms, run in this process against a real Redis."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import RedisServerFactory
from tests.workers import make_worker, take
from tuitop.backends.redis import keys
from tuitop.backends.redis.queue import Queue
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.log import SettableLevel
from tuitop.mail import NoTransport
from tuitop.message import Message, decode, encode
from tuitop.registry import build_registry
from tuitop.worker import watchdog as watchdog_module
from tuitop.worker.heartbeat import Heartbeat
from tuitop.worker.loop import Worker
from tuitop.worker.options import worker_id_of
from tuitop.worker.status import WorkerStatus
from tuitop.worker.watchdog import GIVE_BACK_AFTER, BatchGuard


def test_worker_ids_are_unique_per_process(redis_server: EmbeddedRedis) -> None:
    worker = make_worker(redis_server)
    assert worker.id == worker_id_of("test/0", os.getpid()) == f"test/0#{os.getpid()}"


def test_a_slow_job_has_the_rest_of_its_batch_given_back_while_it_runs(
    redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    worker = make_worker(redis_server)
    raws = [encode("tuitop.noop", {"n": n}) for n in range(4)]
    redis_client.lpush(keys.QUEUE, *raws)
    batch = take(worker, 4)
    assert [message.raw for message in batch] == raws
    watchdog = Heartbeat(worker)
    watchdog.start()
    try:
        # The first job "runs" (this thread waits) past the give-back deadline.
        worker.batch.arm(batch[1:], time.monotonic() + GIVE_BACK_AFTER, keys.QUEUE)
        time.sleep(GIVE_BACK_AFTER + 0.25)
        # While it still runs, another worker could take the rest already.
        assert redis_client.lrange(keys.QUEUE, 0, -1) == list(reversed(raws[1:]))
        assert worker.batch.disarm() == (True, 0)
    finally:
        watchdog.stop()
    assert redis_client.lrange(keys.processing_list(worker.id), 0, -1) == [raws[0]]
    # Taken next, in their order.
    assert Queue(redis_client).take("other/0#1", 3) == raws[1:]


def test_a_fast_job_keeps_its_batch(redis_server: EmbeddedRedis) -> None:
    worker = make_worker(redis_server)
    watchdog = Heartbeat(worker)
    watchdog.start()
    try:
        worker.batch.arm([decode(b"tail")], time.monotonic() + 5.0, keys.QUEUE)
        time.sleep(0.1)
        assert worker.batch.disarm() == (False, 0)
    finally:
        watchdog.stop()


def test_stranded_messages_are_given_back_before_waiting(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    worker = make_worker(redis_server)
    stranded = encode("tuitop.noop", {"stranded": True})
    # As after a timed-out reply: Redis moved it, the worker never heard of it.
    redis_client.lpush(keys.processing_list(worker.id), stranded)
    with caplog.at_level(logging.WARNING, logger="tuitop.worker"):
        batch, source = worker._next_batch()
    assert ([m.raw for m in batch], source) == ([stranded], keys.QUEUE)  # given back, taken
    assert "gives back 1 stranded message(s)" in caplog.text
    assert redis_client.lrange(keys.processing_list(worker.id), 0, -1) == [stranded]


def test_heartbeat_registers_the_worker_with_a_ttl(
    redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    worker = make_worker(redis_server)
    worker.beat(worker.channel)
    assert redis_client.sismember(keys.WORKERS, worker.id)
    beat = redis_client.hgetall(keys.heartbeat(worker.id))
    assert beat[b"pid"] == str(os.getpid()).encode()
    assert beat[b"pool"] == b"test"
    # Alive for a heartbeat's life by its own word; the hash outlives it (an idle worker
    # does not rewrite it: its pool lists it as alive meanwhile).
    assert 0 < redis_client.ttl(keys.worker_alive(worker.id)) <= 10
    assert 0 < redis_client.ttl(keys.heartbeat(worker.id)) <= keys.WORKER_HASH_SECONDS


def test_the_worker_log_is_created_private_and_again_after_logrotate(tmp_path: Path) -> None:
    """Issue 10, case 11: worker_log was created 0644; at debug it holds recipients and
    tracebacks."""
    import os
    import stat

    from tuitop.log import LOG_FILE_MODE, SettableLevel, setup_logging

    path = tmp_path / "worker_log"
    previous = os.umask(0o022)
    tuitop_logger = logging.getLogger("tuitop")
    propagate, level = tuitop_logger.propagate, tuitop_logger.level
    try:
        logger = setup_logging(
            log_file=str(path), to_stderr=False, level=SettableLevel(logging.INFO)
        )
        logger.warning("one")
        assert stat.S_IMODE(path.stat().st_mode) == LOG_FILE_MODE
        path.rename(tmp_path / "worker_log.1")  # logrotate moves it away
        logger.warning("two")
        assert stat.S_IMODE(path.stat().st_mode) == LOG_FILE_MODE
        assert "two" in path.read_text()
    finally:
        os.umask(previous)
        for handler in list(tuitop_logger.handlers):
            tuitop_logger.removeHandler(handler)
            handler.close()
        tuitop_logger.propagate, tuitop_logger.level = propagate, level  # as the others expect


def test_a_worker_whose_list_was_recovered_runs_none_of_what_it_held(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 10, case 3: a worker frozen past its heartbeat had its list recovered by
    another pool; resumed, it ran the rest of its batch anyway (25 duplicates in one
    trial), ignoring its acks' '0 removed'."""
    worker = make_worker(redis_server)
    worker.registry, worker.mail = build_registry(), NoTransport("none")
    redis_client.set(keys.worker_lease(worker.id), 1)  # as it does when it starts
    raws = [encode("tuitop.noop", {"n": n}) for n in range(10)]
    redis_client.lpush(keys.QUEUE, *raws)
    batch = take(worker, 10)
    assert len(batch) == 10
    # It freezes here; meanwhile another pool finds it silent and recovers its list.
    Queue(redis_client).recover(worker.id, "stopped beating", unless_beating=True)
    worker.last_beat = time.monotonic() - 60  # it is thawed a minute later
    with caplog.at_level(logging.ERROR, logger="tuitop.worker"):
        worker._run_batch(batch, keys.QUEUE)
    assert worker.status.done == 0  # none run here: they wait for their retry elsewhere
    assert redis_client.zcard(keys.DELAYED) == 10
    assert worker.stop_requested and "runs none of the 10 it held" in caplog.text


def worker_holding_four(server: EmbeddedRedis) -> tuple[Worker, list[bytes], list[Message]]:
    """A worker with its lease that has taken four no-ops: (worker, pushed, taken)."""
    worker = make_worker(server)
    client = server.client()
    client.set(keys.worker_lease(worker.id), 1)
    raws = [encode("tuitop.noop", {"n": n}) for n in range(4)]
    client.lpush(keys.QUEUE, *raws)
    client.close()
    return worker, raws, take(worker, 4)


def test_what_finished_before_a_long_job_is_acked_while_it_runs(
    redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """Issue 10, case 4: fast jobs finished before a slow one stayed unacked until it
    ended (up to --job-timeout): a time-limit kill ran them again."""
    worker, raws, batch = worker_holding_four(redis_server)
    watchdog = Heartbeat(worker)
    watchdog.start()
    try:
        # Three finished, not yet acked (acks go by the batch); the fourth runs long.
        worker.batch.arm([], time.monotonic() + GIVE_BACK_AFTER, keys.QUEUE, batch[:3])
        time.sleep(GIVE_BACK_AFTER + 0.25)
        # Killed now, only the long one would be run again.
        assert redis_client.lrange(keys.processing_list(worker.id), 0, -1) == [raws[3]]
        assert worker.batch.disarm() == (False, 3)
    finally:
        watchdog.stop()
    assert not worker.lost


def test_acks_the_watchdog_could_not_make_stay_the_workers_to_make(
    redis_server_factory: RedisServerFactory,
) -> None:
    """Were they counted as acked, the worker would drop them; still in its list, they
    would go back to the queue at its end and run again (the review's case)."""
    server = redis_server_factory(appendonly=True)
    worker, _, batch = worker_holding_four(server)
    watchdog = Heartbeat(worker)
    watchdog.start()
    try:
        server.kill()  # the watchdog's ack cannot go through
        worker.batch.arm([], time.monotonic() + GIVE_BACK_AFTER, keys.QUEUE, batch[:3])
        time.sleep(GIVE_BACK_AFTER + 0.25)
        assert worker.batch.disarm() == (False, 0)  # waited for the ack to fail
    finally:
        watchdog.stop()
    server.start()
    assert server.client().llen(keys.processing_list(worker.id)) == 4  # still its own


def test_acks_still_under_way_when_the_job_ends_stay_the_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The job's end waits for the watchdog's ack only so long; an ack still under way
    then is the worker's to make, and its late fate must not touch the next job's count
    (it went negative: the next job's acks were dropped, and ran twice)."""
    monkeypatch.setattr(watchdog_module, "ACK_WAIT", 0.05)
    guard = BatchGuard()
    guard.arm([], 0.0, keys.QUEUE, [b"a", b"b", b"c"])
    assert guard.claim_if_late(1.0)[2] == [b"a", b"b", b"c"]
    assert guard.disarm() == (False, 0)  # not settled in time: none counted as made
    guard.arm([], 0.0, keys.QUEUE, [b"d"])
    guard.acks_settled(acked=False)  # the first job's, late: nobody's now
    assert guard.claim_if_late(1.0)[2] == [b"d"]
    guard.acks_settled(acked=True)
    assert guard.disarm() == (False, 1)


def test_what_was_counted_before_a_long_job_is_written_while_it_runs(
    redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """A job armed with nothing to give back or ack does not wake the watchdog at once
    (that cost a wake a message); the stats counted before it still go within the
    heartbeat's second, not at its end."""
    worker = make_worker(redis_server)
    for n in range(3):
        worker._count(decode(encode("tuitop.noop", {"n": n})), time.time(), True, failed=False)
    watchdog = Heartbeat(worker)
    watchdog.start()
    try:
        worker.batch.arm([], time.monotonic() + GIVE_BACK_AFTER, keys.QUEUE)
        deadline = time.monotonic() + worker.options.heartbeat_interval + 2.0
        done = 0
        while time.monotonic() < deadline and done < 3:
            buckets = redis_client.keys(keys.stats_bucket(0).rsplit(":", 1)[0] + ":*")
            done = sum(int(redis_client.hget(bucket, "done") or 0) for bucket in buckets)
            time.sleep(0.05)
        assert done == 3
        assert worker.batch.disarm() == (False, 0)
    finally:
        watchdog.stop()


def test_acks_and_the_next_take_go_in_one_round_trip_even_after_redis_lost_its_scripts(
    redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """A batch's acks go with the next take (one round trip); when Redis lost its
    scripts meanwhile (a restart, SCRIPT FLUSH), the acks still go and the take is made
    on its own, loading the script again."""
    worker = make_worker(redis_server)
    raws = [encode("tuitop.noop", {"n": n}) for n in range(6)]
    redis_client.lpush(keys.QUEUE, *raws[:3])
    first = take(worker, 3)
    redis_client.lpush(keys.QUEUE, *raws[3:])
    before = redis_client.info("stats")["total_connections_received"]
    calls = redis_client.info("commandstats")
    all_there, batch = worker.channel.ack_and_take(worker.id, first, worker.batch.stats, 2)
    assert all_there
    assert [message.raw for message in batch.messages] == raws[3:5]
    stats = redis_client.info("commandstats")
    # The ack (EVAL) and the take (EVALSHA), one of each, none loaded again.
    assert stats["cmdstat_eval"]["calls"] == calls.get("cmdstat_eval", {}).get("calls", 0) + 1
    assert stats["cmdstat_evalsha"]["calls"] == calls["cmdstat_evalsha"]["calls"] + 1
    assert redis_client.info("stats")["total_connections_received"] == before
    processing = keys.processing_list(worker.id)
    assert sorted(redis_client.lrange(processing, 0, -1)) == sorted(raws[3:5])

    redis_client.script_flush()
    all_there, batch = worker.channel.ack_and_take(worker.id, batch.messages, worker.batch.stats, 5)
    assert all_there
    assert [message.raw for message in batch.messages] == raws[5:]
    assert redis_client.lrange(processing, 0, -1) == [raws[5]]
    assert redis_client.llen(keys.QUEUE) == 0


def test_an_idle_worker_waits_again_without_a_take_in_between(
    redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """A worker of the default lane whose wait (BLMOVE on Tuleap's list) took nothing
    waits again at once: the take script in between was 4 commands more each
    block_timeout, per idle worker (8 workers: 1 command a second). A lane worker still
    takes between waits: that is its look at its lane."""
    worker = make_worker(redis_server)
    worker.channel.start(worker.id)

    def calls(*names: str) -> int:
        stats = redis_client.info("commandstats")
        return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in names)

    assert worker._next_batch()[0] == []  # a take (its script loaded), then a wait in vain
    takes, waits = calls("evalsha", "eval"), calls("blmove")
    for _ in range(3):
        assert worker._next_batch()[0] == []  # each waits block_timeout (0.2 s) in vain
    assert calls("evalsha", "eval") == takes
    assert calls("blmove") - waits == 3
    raw = encode("tuitop.noop", {"n": 1})
    redis_client.lpush(keys.QUEUE, raw)
    assert [message.raw for message in worker._next_batch()[0]] == [raw]

    options = dataclasses.replace(
        worker.options,
        slot_name="test/1",
        slot=1,
        lane="latency_15m",
        serves=("latency_15m", "default"),
        help_interval=0.2,
    )
    lane_worker = Worker(options, WorkerStatus.create(), SettableLevel(logging.DEBUG))
    lane_worker.connect()
    lane_worker.channel.start(lane_worker.id)
    takes = calls("evalsha", "eval")
    for _ in range(2):
        assert lane_worker._next_batch()[0] == []
    assert calls("evalsha", "eval") - takes == 2
