"""The reliable queue against a real Redis: every message is always in exactly one place.

The places are the queue (``keys.QUEUE``), one processing list, the delayed set, the
dead-letter list, or done (acked). Each test puts messages with a unique ``id`` in their
payload through the queue's operations and then looks at what Redis holds.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any, cast

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuitop.backends.base import MAX_REQUEUES, Recovery, RetryPolicy, TimedOut
from tuitop.backends.redis import keys
from tuitop.backends.redis.queue import (
    Queue,
    Taken,
    Waited,
    dead_letter_entry,
    parse_dead_letter,
)
from tuitop.backends.redis.stats import read_buckets
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.message import decode, encode, job_key, with_payload
from tuitop.stats import summarize

TOPIC = "tuitop.test"
WORKER = "host-a/1"
OTHER = "host-b/1"


def message(ident: Any, queued_total: int = 0, **extra: Any) -> bytes:
    return encode(TOPIC, {"id": ident, **extra}, enqueue_ts=1764237600.5, queued_total=queued_total)


def ident(raw: bytes) -> Any:
    return decode(raw).payload["id"]


def strip_token(member: bytes) -> bytes:
    """A delayed-set member is ``<token>|<message>``: the message."""
    token, separator, raw = member.partition(b"|")
    assert separator and token, member
    return raw


def queue_values(client: redis.Redis) -> list[bytes]:
    """The queue in the order it is taken (next first)."""
    return list(reversed(cast(list[bytes], client.lrange(keys.QUEUE, 0, -1))))


def processing(client: redis.Redis, worker_id: str) -> list[bytes]:
    return cast(list[bytes], client.lrange(keys.processing_list(worker_id), 0, -1))


def delayed(client: redis.Redis) -> list[tuple[bytes, float]]:
    """The delayed messages (token stripped) with their due time, soonest first."""
    members = cast(list[tuple[bytes, float]], client.zrange(keys.DELAYED, 0, -1, withscores=True))
    return [(strip_token(member), score) for member, score in members]


def dead(client: redis.Redis) -> list[dict[str, Any]]:
    entries = cast(list[bytes], client.lrange(keys.DEAD_LETTERS, 0, -1))
    return [json.loads(entry) for entry in entries]


def everywhere(client: redis.Redis) -> Counter[Any]:
    """How many copies of each message id exist in Redis (queue, processing, delayed, dead)."""
    found: Counter[Any] = Counter()
    lists = [queue_values(client)]
    for key in cast(list[bytes], client.keys(keys.PROCESSING_PATTERN)):
        lists.append(cast(list[bytes], client.lrange(key, 0, -1)))
    lists.append([raw for raw, _ in delayed(client)])
    lists.append([letter["message"].encode() for letter in dead(client)])
    for values in lists:
        found.update(ident(raw) for raw in values)
    return found


@pytest.fixture
def queue(redis_client: redis.Redis) -> Queue:
    return Queue(redis_client)


def ack(client: redis.Redis, queue: Queue, worker_id: str, raws: list[bytes]) -> list[int]:
    pipe = client.pipeline(transaction=False)
    queue.ack_into(pipe, worker_id, raws)
    return [int(flag) for flag in pipe.execute()[0].decode()] if raws else []


# --- push, take, ack --------------------------------------------------------------------


def test_push_take_ack(redis_client: redis.Redis, queue: Queue) -> None:
    raw = message(1)
    queue.push(raw)
    assert queue_values(redis_client) == [raw]
    assert queue.take(WORKER, 10) == [raw]
    assert queue_values(redis_client) == []
    assert processing(redis_client, WORKER) == [raw]
    assert ack(redis_client, queue, WORKER, [raw]) == [1]
    assert not redis_client.exists(keys.processing_list(WORKER))
    assert everywhere(redis_client) == Counter()


def test_ack_into_leaves_the_rest_of_the_batch(redis_client: redis.Redis, queue: Queue) -> None:
    raws = [message(n) for n in range(3)]
    for raw in raws:
        queue.push(raw)
    assert queue.take(WORKER, 3) == raws
    ack(redis_client, queue, WORKER, [raws[0], raws[2]])
    assert processing(redis_client, WORKER) == [raws[1]]


def test_take_on_an_empty_queue(redis_client: redis.Redis, queue: Queue) -> None:
    assert queue.take(WORKER, 5) == []
    assert not redis_client.exists(keys.processing_list(WORKER))


@pytest.mark.parametrize(
    ("workers", "queued", "max_batch", "expected"),
    [
        (0, 5, 10, 5),  # no registered worker counts as one
        (1, 10, 4, 4),  # capped by max_batch
        (1, 3, 10, 3),  # the whole queue
        (3, 10, 8, 3),  # fair share: 10 // 3
        (4, 9, 8, 2),
        (4, 3, 8, 1),  # fair share 0, but at least one
        (5, 1, 8, 1),
    ],
)
def test_take_takes_a_fair_share(
    redis_client: redis.Redis,
    queue: Queue,
    workers: int,
    queued: int,
    max_batch: int,
    expected: int,
) -> None:
    if workers:
        redis_client.sadd(keys.WORKERS, *[f"host/{n}" for n in range(workers)])
    raws = [message(n) for n in range(queued)]
    for raw in raws:
        queue.push(raw)
    batch = queue.take("host/0", max_batch)
    assert batch == raws[:expected]  # the oldest, oldest first
    assert queue_values(redis_client) == raws[expected:]
    # The processing list holds the first taken at its tail (as Tuleap's BRPOPLPUSH would).
    assert processing(redis_client, "host/0") == list(reversed(batch))


def test_take_blocking_times_out(redis_client: redis.Redis, queue: Queue) -> None:
    assert queue.take_blocking(WORKER, 0.1) == Waited(None)
    assert not redis_client.exists(keys.processing_list(WORKER))


def test_take_blocking_gets_a_message_pushed_meanwhile(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, queue: Queue
) -> None:
    raw = message("late")
    producer_client = redis_server.client()

    def produce() -> None:
        time.sleep(0.1)
        Queue(producer_client).push(raw)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        assert queue.take_blocking(WORKER, 5.0) == Waited(raw)
    finally:
        producer.join()
        producer_client.close()
    assert processing(redis_client, WORKER) == [raw]
    assert queue_values(redis_client) == []


# --- give_back --------------------------------------------------------------------------


def test_give_back_restores_the_order_at_the_head(redis_client: redis.Redis, queue: Queue) -> None:
    raws = [message("a"), message("b", queued_total=2), message("c"), message("d")]
    for raw in raws:
        queue.push(raw)
    batch = queue.take(WORKER, 3)
    assert batch == raws[:3]
    ack(redis_client, queue, WORKER, batch[:1])
    queue.give_back(WORKER, batch[1:])
    assert processing(redis_client, WORKER) == []
    # Back where they were, exactly as they were (try count unchanged), taken next.
    assert queue_values(redis_client) == raws[1:]
    assert queue.take(WORKER, 10) == raws[1:]
    assert decode(raws[1]).queued_total == 2


def test_give_back_of_nothing(redis_client: redis.Redis, queue: Queue) -> None:
    queue.push(message(1))
    queue.give_back(WORKER, [])
    assert queue_values(redis_client) == [message(1)]


def test_give_back_after_a_recovery_does_not_duplicate(
    redis_client: redis.Redis, queue: Queue
) -> None:
    # A worker thought dead (its heartbeat expired) is recovered by a supervisor while it
    # still runs; when it then gives back what it took, nothing must come back twice.
    raws = [message(1), message(2)]
    for raw in raws:
        queue.push(raw)
    batch = queue.take(WORKER, 2)
    assert queue.recover(WORKER, "stopped beating") == Recovery(2, 0)
    queue.give_back(WORKER, batch)
    assert everywhere(redis_client) == Counter({1: 1, 2: 1})


# --- fail -------------------------------------------------------------------------------


@pytest.mark.parametrize(("queued_total", "delay"), [(0, 5.0), (1, 10.0), (2, 20.0)])
def test_fail_retryable_goes_to_the_delayed_set(
    redis_client: redis.Redis, queue: Queue, queued_total: int, delay: float
) -> None:
    raw = message(7, queued_total)
    queue.push(raw)
    queue.take(WORKER, 1)
    before = time.time()
    assert queue.fail(WORKER, raw, "relay down") == "retried"
    after = time.time()
    assert processing(redis_client, WORKER) == []
    assert queue_values(redis_client) == []
    [(retried, due)] = delayed(redis_client)
    assert decode(retried).queued_total == queued_total + 1
    assert json.loads(retried) == {**json.loads(raw), "_queued_total": queued_total + 1}
    assert queue.retry_policy.delay(queued_total + 1) == delay
    assert before + delay - 0.01 <= due <= after + delay + 0.01
    # In so many seconds by Redis' clock (the pool counts them on its own: issue 22).
    due_in = queue.due_in()
    assert due_in is not None and 0 < due_in <= delay + 0.01
    assert dead(redis_client) == []


def test_retry_policy_delays() -> None:
    policy = RetryPolicy()
    assert [policy.delay(n) for n in range(6)] == [5.0, 5.0, 10.0, 20.0, 40.0, 40.0]
    assert RetryPolicy(base_delay=0.5).delay(3) == 2.0


def test_fail_not_retryable_goes_to_the_dead_letters(
    redis_client: redis.Redis, queue: Queue
) -> None:
    raw = message(8, 1)
    queue.push(raw)
    queue.take(WORKER, 1)
    before = time.time()
    result = queue.fail(WORKER, raw, "bad payload", retryable=False, traceback="Traceback: x")
    assert result == "dead"
    assert processing(redis_client, WORKER) == []
    assert delayed(redis_client) == []
    [letter] = queue.dead_letters()
    assert letter.message == raw
    assert letter.reason == "bad payload"
    assert letter.worker == WORKER
    assert letter.topic == TOPIC
    assert letter.tries == 1
    assert letter.traceback == "Traceback: x"
    assert before <= letter.at <= time.time()


def test_fail_past_max_requeues_is_given_up(redis_client: redis.Redis, queue: Queue) -> None:
    raw = message(9, MAX_REQUEUES)
    queue.push(raw)
    queue.take(WORKER, 1)
    assert queue.fail(WORKER, raw, "relay down") == "dead"
    assert delayed(redis_client) == []
    [letter] = queue.dead_letters()
    assert letter.message == raw
    assert letter.reason.startswith("relay down")
    assert f"{MAX_REQUEUES + 1} tries" in letter.reason
    assert letter.tries == MAX_REQUEUES


def test_max_requeues_follows_the_policy(redis_client: redis.Redis) -> None:
    queue = Queue(redis_client, RetryPolicy(base_delay=1.0, max_requeues=1))
    first, second = message(1, 0), message(2, 1)
    for raw in (first, second):
        queue.push(raw)
    queue.take(WORKER, 2)
    assert queue.fail(WORKER, first, "x") == "retried"
    assert queue.fail(WORKER, second, "x") == "dead"


def test_fail_of_an_unusable_message_is_dead(redis_client: redis.Redis, queue: Queue) -> None:
    queue.push(b"not json")
    [raw] = queue.take(WORKER, 1)
    assert queue.fail(WORKER, raw, "handler failed") == "dead"
    [letter] = queue.dead_letters()
    assert letter.message == b"not json"
    assert "not JSON" in letter.reason


def test_fail_with_a_replacement_retries_the_replacement(
    redis_client: redis.Redis, queue: Queue
) -> None:
    raw = message(10, 0, mails=["m1", "m2", "m3"])
    queue.push(raw)
    queue.take(WORKER, 1)
    replacement = with_payload(raw, {"id": 10, "mails": ["m2", "m3"]})
    assert queue.fail(WORKER, raw, "451", replacement=replacement) == "retried"
    assert processing(redis_client, WORKER) == []
    [(retried, _)] = delayed(redis_client)
    assert decode(retried).payload == {"id": 10, "mails": ["m2", "m3"]}
    assert decode(retried).queued_total == 1


def test_fail_with_a_replacement_dead_letters_the_replacement(
    redis_client: redis.Redis, queue: Queue
) -> None:
    raw = message(11, 0, mails=["m1", "m2"])
    queue.push(raw)
    queue.take(WORKER, 1)
    replacement = with_payload(raw, {"id": 11, "mails": ["m2"]})
    assert queue.fail(WORKER, raw, "550", retryable=False, replacement=replacement) == "dead"
    [letter] = queue.dead_letters()
    assert letter.message == replacement
    assert processing(redis_client, WORKER) == []


def test_identical_messages_failing_stay_two(redis_client: redis.Redis, queue: Queue) -> None:
    raw = message("twin")
    queue.push(raw)
    queue.push(raw)
    assert queue.take(WORKER, 2) == [raw, raw]
    assert queue.fail(WORKER, raw, "x") == "retried"
    assert queue.fail(WORKER, raw, "x") == "retried"
    assert processing(redis_client, WORKER) == []
    assert redis_client.zcard(keys.DELAYED) == 2
    assert queue.move_due(now=time.time() + 3600) == 2
    assert queue_values(redis_client) == [message("twin", 1)] * 2


def test_fail_after_a_recovery_does_not_duplicate(redis_client: redis.Redis, queue: Queue) -> None:
    # The worker was recovered by a supervisor while it still ran its job (its heartbeat
    # expired); when the job then fails, the message must not exist twice.
    raw = message(12)
    queue.push(raw)
    queue.take(WORKER, 1)
    assert queue.recover(WORKER, "stopped beating") == Recovery(1, 0)
    assert queue.fail(WORKER, raw, "relay down") == "gone"
    assert queue.fail(WORKER, raw, "bad payload", retryable=False) == "gone"
    assert everywhere(redis_client) == Counter({12: 1})
    counts = summarize(read_buckets(redis_client, time.time(), 60), 60).counts
    assert counts == {"enqueued": 1, "retried": 1}


# --- delayed messages -------------------------------------------------------------------


def test_move_due_moves_to_the_head_in_due_order(redis_client: redis.Redis, queue: Queue) -> None:
    soon, later, latest = message("soon", 0), message("later", 1), message("latest", 2)
    for raw in (latest, soon, later):
        queue.push(raw)
    start = time.time()
    assert queue.take(WORKER, 3) == [latest, soon, later]
    for raw in (latest, soon, later):
        queue.fail(WORKER, raw, "x")  # due in 20, 5 and 10 s
    fresh = message("fresh")
    queue.push(fresh)
    assert [ident(raw) for raw, _ in delayed(redis_client)] == ["soon", "later", "latest"]
    [(_, soon_due), _, _] = delayed(redis_client)
    assert 4.0 < (queue.due_in() or 0) <= 5.01  # the soonest, by Redis' clock

    assert queue.move_due(now=start + 4.0) == 0  # nothing due yet
    assert queue_values(redis_client) == [fresh]

    assert queue.move_due(now=soon_due) == 1  # due at exactly its time
    assert queue_values(redis_client) == [message("soon", 1), fresh]
    assert 9.0 < (queue.due_in() or 0) <= 10.01

    assert queue.move_due(now=start + 3600) == 2
    assert queue_values(redis_client) == [
        message("later", 2),
        message("latest", 3),
        message("soon", 1),
        fresh,
    ]
    assert queue.due_in() is None
    assert not redis_client.exists(keys.DELAYED)
    assert queue.take(WORKER, 1) == [message("later", 2)]


def test_move_due_respects_the_limit(redis_client: redis.Redis, queue: Queue) -> None:
    raws = [message(n, n) for n in range(3)]  # due in 5, 5, 10 s
    for raw in raws:
        queue.push(raw)
    queue.take(WORKER, 3)
    for raw in raws:
        queue.fail(WORKER, raw, "x")
    assert queue.move_due(now=time.time() + 3600, limit=2) == 2
    assert redis_client.zcard(keys.DELAYED) == 1
    assert queue.move_due(now=time.time() + 3600, limit=2) == 1
    assert sorted(ident(raw) for raw in queue_values(redis_client)) == [0, 1, 2]


def test_move_due_keeps_a_value_with_a_separator_intact(
    redis_client: redis.Redis, queue: Queue
) -> None:
    raw = message("a|b|c")
    queue.push(raw)
    queue.take(WORKER, 1)
    queue.fail(WORKER, raw, "x")
    queue.move_due(now=time.time() + 3600)
    assert queue_values(redis_client) == [message("a|b|c", 1)]


def test_nothing_is_due_on_an_empty_set(queue: Queue) -> None:
    assert queue.due_in() is None
    assert queue.move_due() == 0


# --- recover ----------------------------------------------------------------------------


def fill_processing(queue: Queue, worker_id: str, raws: list[bytes]) -> None:
    for raw in raws:
        queue.push(raw)
    assert queue.take(worker_id, len(raws)) == raws


@pytest.mark.parametrize("forget", [True, False])
def test_recover_a_mixed_list(redis_client: redis.Redis, queue: Queue, forget: bool) -> None:
    fresh, tired, garbage = message("fresh"), message("tired", MAX_REQUEUES), b"\xffnot json"
    fill_processing(queue, WORKER, [fresh, tired, garbage])
    redis_client.sadd(keys.WORKERS, WORKER, OTHER)
    before = time.time()
    recovery = queue.recover(WORKER, "worker host-a/1 died", forget_worker=forget)
    assert recovery == Recovery(requeued=1, dead_lettered=2)
    assert recovery.total == 3
    assert not redis_client.exists(keys.processing_list(WORKER))
    members = cast(set[bytes], redis_client.smembers(keys.WORKERS))
    assert members == ({OTHER.encode()} if forget else {WORKER.encode(), OTHER.encode()})
    [(retried, due)] = delayed(redis_client)
    assert retried == message("fresh", 1)
    assert before + 5.0 - 0.01 <= due <= time.time() + 5.0 + 0.01
    letters = queue.dead_letters()
    assert sorted(letter.message for letter in letters) == sorted([tired, garbage])
    for letter in letters:
        assert letter.reason.startswith("worker host-a/1 died")
        assert letter.worker == WORKER
    by_message = {letter.message: letter for letter in letters}
    assert "4 tries" in by_message[tired].reason
    assert by_message[tired].tries == MAX_REQUEUES
    assert "not JSON" in by_message[garbage].reason
    assert queue_values(redis_client) == []


def test_a_worker_killed_at_the_time_limit_has_that_job_given_up_and_the_rest_retried(
    redis_client: redis.Redis, queue: Queue
) -> None:
    """The job it ran (known by its key) is a dead letter at once, as Tuleap drops it; the
    rest it held goes back. The same bytes twice in its list: one only is given up."""
    running, twin, other = message("run"), message("run"), message("other")
    assert running == twin
    fill_processing(queue, WORKER, [running, twin, other])
    cut = TimedOut(job_key(decode(running)))
    recovery = queue.recover(WORKER, "its job ran past the time limit", timed_out=cut)
    assert (recovery.dead_lettered, recovery.requeued) == (1, 2)
    [letter] = queue.dead_letters()
    assert letter.message == running and "not retried" in letter.reason
    assert sorted(raw for raw, _ in delayed(redis_client)) == sorted(
        [message("run", 1), message("other", 1)]
    )
    # A topic the admin opted back into retries: nothing is given up.
    fill_processing(queue, OTHER, [running])
    retried = TimedOut(job_key(decode(running)), retried=lambda topic: True)
    assert queue.recover(OTHER, "past the limit", timed_out=retried) == Recovery(1, 0)


def test_recover_an_empty_list(redis_client: redis.Redis, queue: Queue) -> None:
    redis_client.sadd(keys.WORKERS, WORKER)
    assert queue.recover(WORKER, "gone") == Recovery(0, 0)
    assert not redis_client.sismember(keys.WORKERS, WORKER)


def recover_at_once(
    server: EmbeddedRedis,
    barrier: threading.Barrier,
    results: list[Recovery],
    errors: list[BaseException],
) -> None:
    """A supervisor thread: waits for the other one, then recovers WORKER's list."""
    own = server.client()
    try:
        barrier.wait(5)
        results.append(Queue(own).recover(WORKER, "two supervisors"))
    except BaseException as error:
        errors.append(error)
    finally:
        own.close()


def test_recover_from_two_threads_at_once(redis_server: EmbeddedRedis, queue: Queue) -> None:
    client = redis_server.client()
    count = 300
    for round_number in range(3):
        client.flushall()
        raws = [message(f"{round_number}-{n}", n % 5) for n in range(count)]
        fill_processing(queue, WORKER, raws)
        barrier = threading.Barrier(2)
        results: list[Recovery] = []
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=recover_at_once, args=(redis_server, barrier, results, errors))
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert errors == []
        assert len(results) == 2
        assert sum(result.total for result in results) == count
        found = everywhere(client)
        assert found == Counter({ident(raw): 1 for raw in raws})
        assert client.zcard(keys.DELAYED) == sum(r.requeued for r in results)
        assert client.llen(keys.DEAD_LETTERS) == sum(r.dead_lettered for r in results)
        # queued_total 3 and 4 are past the limit: 2 of every 5 are given up.
        assert client.llen(keys.DEAD_LETTERS) == count * 2 // 5
    client.close()


def supervise(
    server: EmbeddedRedis, barrier: threading.Barrier, pause: float, recovered: list[Recovery]
) -> None:
    """A supervisor thread that finds WORKER's heartbeat expired and recovers its list."""
    own = server.client()
    barrier.wait(5)
    time.sleep(pause)
    recovered.append(Queue(own).recover(WORKER, "stopped beating"))
    own.close()


def test_a_worker_failing_while_a_supervisor_recovers(redis_server: EmbeddedRedis) -> None:
    # The worker fails or gives back its messages one by one while a supervisor, thinking
    # it dead, recovers its list: whoever comes first moves each message, only once.
    client = redis_server.client()
    queue = Queue(client)
    count = 100
    recovered: list[Recovery] = []
    for round_number in range(3):
        client.flushall()
        raws = [message(f"{round_number}-{n}") for n in range(count)]
        fill_processing(queue, WORKER, raws)
        barrier = threading.Barrier(2)
        supervisor = threading.Thread(
            target=supervise, args=(redis_server, barrier, 0.01 * round_number, recovered)
        )
        supervisor.start()
        barrier.wait(5)
        for n, raw in enumerate(raws):
            if n % 2:
                queue.fail(WORKER, raw, "relay down", retryable=n % 3 != 0)
            else:
                queue.give_back(WORKER, [raw])
            time.sleep(0.0005)  # a gap for the supervisor's WATCH to win now and then
        supervisor.join(10)
        assert everywhere(client) == Counter({ident(raw): 1 for raw in raws})
    client.close()
    assert len(recovered) == 3
    # The race took place: the supervisor took messages from under the worker at least once.
    assert any(recovery.total for recovery in recovered)


# --- dead letters -----------------------------------------------------------------------


def test_dead_letters_replay_and_purge(redis_client: redis.Redis, queue: Queue) -> None:
    raws = [message(n, 2) for n in range(3)]
    fill_processing(queue, WORKER, raws)
    for raw in raws:
        queue.fail(WORKER, raw, f"reason {ident(raw)}", retryable=False)
    letters = queue.dead_letters()
    assert [letter.reason for letter in letters] == ["reason 2", "reason 1", "reason 0"]
    assert [letter.reason for letter in queue.dead_letters(1, 1)] == ["reason 1"]

    middle = letters[1]
    assert queue.replay(middle) is True
    assert queue_values(redis_client) == [message(1, 0)]  # try count reset
    assert [letter.reason for letter in queue.dead_letters()] == ["reason 2", "reason 0"]
    assert queue.replay(middle) is False
    assert queue_values(redis_client) == [message(1, 0)]

    assert queue.purge_dead_letters() == 2
    assert queue.dead_letters() == []
    assert queue.replay(letters[0]) is False
    assert queue.purge_dead_letters() == 0


def test_replay_of_an_unusable_message_keeps_it_as_it_was(
    redis_client: redis.Redis, queue: Queue
) -> None:
    garbage = b"\xff\xfe\x00 not utf-8"
    fill_processing(queue, WORKER, [garbage])
    queue.fail(WORKER, garbage, "unusable", retryable=False)
    [letter] = queue.dead_letters()
    assert letter.message == garbage
    assert queue.replay(letter) is True
    assert queue_values(redis_client) == [garbage]


def test_replay_puts_the_letter_at_the_end_of_the_queue(
    redis_client: redis.Redis, queue: Queue
) -> None:
    raw = message("old", 3)
    fill_processing(queue, WORKER, [raw])
    queue.fail(WORKER, raw, "x", retryable=False)
    queue.push(message("waiting"))
    assert queue.replay(queue.dead_letters()[0])
    assert queue_values(redis_client) == [message("waiting"), message("old", 0)]


# --- stats ------------------------------------------------------------------------------


def test_operations_count_their_outcomes(redis_client: redis.Redis, queue: Queue) -> None:
    raws = [message(n) for n in range(4)] + [message("tired", MAX_REQUEUES)]
    for raw in raws:
        queue.push(raw)
    assert queue.take(WORKER, 3) == raws[:3]
    queue.fail(WORKER, raws[0], "x")  # failed, retried
    queue.fail(WORKER, raws[1], "x", retryable=False)  # failed, dead
    queue.fail(WORKER, raws[2], "x", outcome="timedout")  # timedout, retried
    assert queue.take(OTHER, 2) == raws[3:]
    assert queue.recover(OTHER, "gone") == Recovery(1, 1)
    stats = summarize(read_buckets(redis_client, time.time(), 60), 60)
    assert stats.counts == {"enqueued": 5, "failed": 2, "timedout": 1, "retried": 3, "dead": 2}
    assert stats.counts["retried"] == redis_client.zcard(keys.DELAYED)
    assert stats.counts["dead"] == redis_client.llen(keys.DEAD_LETTERS)
    assert stats.wait.count == 0


# --- conservation -----------------------------------------------------------------------

WORKER_IDS = ("h/0", "h/1")
OPERATIONS = (
    "push",
    "take",
    "ack",
    "fail",
    "fail_dead",
    "give_back",
    "recover",
    "recover_alive",
    "move_due",
    "replay",
)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(OPERATIONS),
            st.sampled_from(WORKER_IDS),
            st.integers(min_value=0, max_value=6),
        ),
        min_size=10,
        max_size=40,
    )
)
def test_no_message_is_lost_or_duplicated(
    redis_client: redis.Redis, operations: list[tuple[str, str, int]]
) -> None:
    """Whatever workers and supervisors do, each pushed id ends exactly once in Redis or done.

    ``held`` is what each worker believes it holds; a worker recovered while alive keeps
    believing it, and an ack counts as done only when it removed the message.
    """
    redis_client.flushall()
    queue = Queue(redis_client)
    pushed: Counter[int] = Counter()
    done: Counter[int] = Counter()
    held: dict[str, list[bytes]] = {worker_id: [] for worker_id in WORKER_IDS}
    next_id = 0
    redis_client.sadd(keys.WORKERS, *WORKER_IDS, "h/2")
    # Start with work under way: a queue, and each worker holding a batch.
    for _ in range(8):
        queue.push(message(next_id, next_id % 5))
        pushed[next_id] += 1
        next_id += 1
    for worker_id in WORKER_IDS:
        held[worker_id] = queue.take(worker_id, 2)

    def pick(worker_id: str, number: int) -> list[bytes]:
        mine = held[worker_id]
        if not mine:
            return []
        return [mine.pop(number % len(mine))]

    for operation, worker_id, number in operations:
        if operation == "push":
            for _ in range(number + 1):
                queue.push(message(next_id, number % 5))
                pushed[next_id] += 1
                next_id += 1
        elif operation == "take" and number == 0:
            raw = queue.take_blocking(worker_id, 0.01).raw
            if raw is not None:
                held[worker_id].append(raw)
        elif operation == "take":
            held[worker_id].extend(queue.take(worker_id, number))
        elif operation == "ack":
            raws = pick(worker_id, number)
            for raw, removed in zip(raws, ack(redis_client, queue, worker_id, raws), strict=True):
                if removed:  # done only when the worker still held it
                    done[ident(raw)] += 1
        elif operation in ("fail", "fail_dead"):
            for raw in pick(worker_id, number):
                queue.fail(worker_id, raw, "failed", retryable=operation == "fail")
        elif operation == "give_back":
            cut = number % (len(held[worker_id]) + 1)
            queue.give_back(worker_id, held[worker_id][cut:])
            del held[worker_id][cut:]
        elif operation == "recover":
            # The worker is dead: what it held is recovered and it holds nothing.
            queue.recover(worker_id, "died")
            held[worker_id] = []
        elif operation == "recover_alive":
            # Its heartbeat expired but it still runs, and believes it holds its messages.
            queue.recover(worker_id, "stopped beating", forget_worker=number % 2 == 0)
        elif operation == "move_due":
            queue.move_due(now=time.time() + 10_000)
        elif operation == "replay":
            letters = queue.dead_letters()
            if letters:
                queue.replay(letters[number % len(letters)])

    found = everywhere(redis_client)
    found.update(done)
    assert found == pushed


def test_recover_unless_beating_leaves_a_live_worker_alone(redis_client: redis.Redis) -> None:
    queue = Queue(redis_client)
    raw = encode("tuitop.noop", {"id": "live"})
    redis_client.lpush(keys.processing_list(WORKER), raw)
    # Alive by its own word (its alive key, for a heartbeat's life) ...
    redis_client.set(keys.worker_alive(WORKER), 1, ex=10)
    assert queue.recover(WORKER, "looked silent", unless_beating=True) == Recovery(0, 0)
    assert redis_client.lrange(keys.processing_list(WORKER), 0, -1) == [raw]
    # ... or listed by its live pool (an idle worker writes nothing of its own).
    redis_client.delete(keys.worker_alive(WORKER))
    pool = keys.pool(keys.pool_of(WORKER))
    redis_client.hset(pool, "workers", f"host-a/0#1,{WORKER},host-a/2#3")
    assert queue.recover(WORKER, "looked silent", unless_beating=True) == Recovery(0, 0)
    assert redis_client.lrange(keys.processing_list(WORKER), 0, -1) == [raw]
    # A hash of its own says nothing: only those two do.
    redis_client.hset(pool, "workers", f"host-a/0#1,{WORKER}x")
    redis_client.hset(keys.heartbeat(WORKER), "state", "busy")
    assert queue.recover(WORKER, "stopped beating", unless_beating=True) == Recovery(1, 0)
    assert redis_client.llen(keys.processing_list(WORKER)) == 0
    assert not redis_client.exists(keys.heartbeat(WORKER))


def test_take_or_count_says_what_the_processing_list_holds(redis_client: redis.Redis) -> None:
    queue = Queue(redis_client)
    redis_client.lpush(keys.processing_list(WORKER), b"a", b"b")
    assert queue.take_or_count(WORKER, 5) == Taken([], keys.QUEUE, 2)
    redis_client.lpush(keys.QUEUE, b"c")
    assert queue.take_or_count(WORKER, 5) == Taken([b"c"], keys.QUEUE, 0)


def test_replay_all_takes_every_letter_once_oldest_first_whatever_it_holds(
    redis_client: redis.Redis, queue: Queue
) -> None:
    """Issue 10, case 7: replay read the whole list per letter, stopped for good at a letter
    that could not be written back (1e400), and replay_all capped silently."""
    raws = [message(n, 2) for n in range(350)]
    unwritable = b'{"event_name":"tuitop.noop","payload":1e400}'
    fill_processing(queue, WORKER, raws[:175])
    for raw in raws[:175]:
        queue.fail(WORKER, raw, "died", retryable=False)
    redis_client.lpush(
        keys.DEAD_LETTERS,
        dead_letter_entry(unwritable, "out of range", worker=WORKER, tries=0, topic=""),
    )
    fill_processing(queue, WORKER, raws[175:])
    for raw in raws[175:]:
        queue.fail(WORKER, raw, "died", retryable=False)
    # In chunks smaller than the list, as a million letters are read.
    assert queue.replay_all(chunk=100) == 351
    assert redis_client.llen(keys.DEAD_LETTERS) == 0
    replayed = list(reversed(redis_client.lrange(keys.QUEUE, 0, -1)))  # taken first, first
    assert replayed[175] == unwritable  # kept as it was, in its place
    assert [ident(raw) for raw in replayed[:175] + replayed[176:]] == list(range(350))


def test_replay_all_takes_what_there_is_when_called(
    redis_client: redis.Redis, queue: Queue
) -> None:
    raws = [message(n, 2) for n in range(5)]
    fill_processing(queue, WORKER, raws)
    for raw in raws:
        queue.fail(WORKER, raw, "died", retryable=False)
    assert queue.replay_all(chunk=2) == 5
    assert queue.replay_all(chunk=2) == 0  # nothing left, nothing twice
    assert redis_client.llen(keys.QUEUE) == 5


def test_retries_fall_due_by_redis_clock_whatever_the_hosts(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10, case 6: due times used the failing host's clock and the mover another
    host's: a host an hour ahead made every retry wait an hour (or, behind, none)."""
    queue = Queue(redis_client, RetryPolicy(base_delay=0.5))
    raws = [message(n, 0) for n in range(2)]
    fill_processing(queue, WORKER, raws)
    ahead = time.time() + 3600
    monkeypatch.setattr(time, "time", lambda: ahead)  # this host's clock is an hour off
    queue.fail(WORKER, raws[0], "relay down")
    queue.recover(WORKER, "worker died")  # the other one
    server_now = float(redis_client.time()[0])
    scores = [score for _, score in redis_client.zrange(keys.DELAYED, 0, -1, withscores=True)]
    delay = queue.retry_policy.delay(1)
    assert all(server_now + delay - 2 <= score <= server_now + delay + 2 for score in scores)
    # And they fall due by Redis' clock, whatever this one says.
    monkeypatch.undo()
    assert queue.move_due() == 0
    time.sleep(delay + 0.2)
    assert queue.move_due() == 2


SURROGATE_TOPIC = b'{"event_name":"\\ud800","payload":{},"_queued_total":0}'
"""Valid JSON that Python reads as a str UTF-8 cannot encode (PHP's json_decode refuses it)."""


def test_a_lone_surrogate_is_an_unusable_message_and_its_dead_letter_is_written(
    redis_client: redis.Redis,
) -> None:
    assert decode(SURROGATE_TOPIC).problem is not None
    queue = Queue(redis_client)
    redis_client.lpush(keys.QUEUE, SURROGATE_TOPIC)
    [raw] = queue.take("w/0#1", 1)
    assert queue.fail("w/0#1", raw, "unknown topic", retryable=False) == "dead"
    [letter] = queue.dead_letters()
    assert letter.message == SURROGATE_TOPIC


def test_recovery_past_the_tries_dead_letters_a_lone_surrogate_topic(
    redis_client: redis.Redis,
) -> None:
    """A topic read as a str with a lone surrogate made the dead letter's encoding raise
    mid-transaction: the message stayed in the dead worker's list for good."""
    entry = dead_letter_entry(b"{}", "r", worker="w", tries=1, topic="\ud800")
    assert json.loads(entry)["topic"] == "\ud800"
    queue = Queue(redis_client)
    redis_client.lpush(keys.QUEUE, SURROGATE_TOPIC.replace(b":0}", b":3}"))
    queue.take("w/0#1", 1)
    assert queue.recover("w/0#1", "worker gone").dead_lettered == 1


def test_a_dead_letter_written_by_anyone_reads_without_raising() -> None:
    for entry in (
        b'{"message_hex":"zz"}', b'{"message":"x","at":1e300}', b'{"at":"x","tries":null}',
        b'{"tries":1e400}', b'{"at":-5,"tries":true}', b'[]', b'"x"', b"\xff",
        b'{"topic":"\\ud800","reason":"\\udfff"}',
    ):  # fmt: skip
        letter = parse_dead_letter(entry)
        assert 0 <= letter.at <= 2**33 and 0 <= letter.tries <= 1000
        letter.topic.encode("utf-8") and letter.reason.encode("utf-8")


def test_a_negative_try_count_is_read_as_none_and_tries_end(redis_client: redis.Redis) -> None:
    raw = b'{"event_name":"tuitop.noop","payload":{},"_queued_total":-1000000000}'
    assert decode(raw).queued_total == 0
    queue = Queue(redis_client, RetryPolicy(base_delay=0.0))
    redis_client.lpush(keys.QUEUE, raw)
    for _ in range(MAX_REQUEUES + 1):
        queue.move_due(now=time.time() + 3600)
        queue.take("w/0#1", 1)
        queue.recover("w/0#1", "worker gone")
    assert redis_client.llen(keys.DEAD_LETTERS) == 1
