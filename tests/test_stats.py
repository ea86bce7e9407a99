"""Latency histograms and counters: the bucket maths, and the round trip through Redis."""

from __future__ import annotations

import math
import time

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from tuitop.backends.redis import keys
from tuitop.backends.redis.stats import flush_into, read_buckets
from tuitop.stats import (
    END_TO_END,
    MAX_TOPICS,
    OTHER_TOPIC,
    STATS_BUCKET_SECONDS,
    STATS_KEEP_SECONDS,
    WAIT,
    Percentiles,
    StatsBatch,
    bucket_start,
    bucket_value,
    latency_bucket,
    percentiles,
    summarize,
)

WINDOW = 300

# --- buckets ------------------------------------------------------------------------------


def relative_error(seconds: float) -> float:
    return abs(bucket_value(latency_bucket(seconds)) - seconds) / seconds


def test_buckets_are_within_9_percent_from_1_us_to_1000_s() -> None:
    # 20 000 points spread evenly on a log scale over 9 decades, both ends included.
    steps = 20_000
    values = [1e-6 * 10 ** (9 * step / steps) for step in range(steps + 1)]
    assert values[0] == 1e-6 and math.isclose(values[-1], 1000.0)
    worst = max(relative_error(value) for value in values)
    assert worst <= 0.09


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=1e-6, max_value=1000.0))
def test_any_latency_is_within_9_percent(seconds: float) -> None:
    assert relative_error(seconds) <= 0.09


def test_bucket_edges_are_within_9_percent() -> None:
    for index in range(0, 300):
        low = 2 ** (index / 8) / 1e6
        for value in (low, math.nextafter(low, math.inf), low * 1.0001):
            if 1e-6 <= value <= 1000.0:
                assert relative_error(value) <= 0.09, (index, value)


def test_buckets_grow_with_the_latency() -> None:
    values = [1e-6 * 1.01**step for step in range(2100)]  # up to ~1.2 s
    indexes = [latency_bucket(value) for value in values]
    assert indexes == sorted(indexes)
    assert len(set(indexes)) > 100  # 8 per octave over 20 octaves


@pytest.mark.parametrize("seconds", [0.0, -0.5, -1e9, 1e-9, 1e-6])
def test_tiny_and_negative_latencies_count_as_one_microsecond(seconds: float) -> None:
    assert latency_bucket(seconds) == latency_bucket(1e-6) == 0
    assert math.isclose(bucket_value(0), 1e-6, rel_tol=0.09)


def test_bucket_start_is_aligned() -> None:
    assert bucket_start(1_000_000_007.9) == 1_000_000_000
    assert bucket_start(1_000_000_010.0) == 1_000_000_010
    assert bucket_start(1_000_000_019.99) == 1_000_000_010


# --- percentiles --------------------------------------------------------------------------


def histogram(*samples: tuple[float, int]) -> dict[int, int]:
    result: dict[int, int] = {}
    for seconds, count in samples:
        index = latency_bucket(seconds)
        result[index] = result.get(index, 0) + count
    return result


def value_of(seconds: float) -> float:
    """What a latency reads as once put in a histogram."""
    return bucket_value(latency_bucket(seconds))


def test_percentiles_of_an_empty_histogram() -> None:
    assert percentiles({}) == Percentiles(0, None, None, None, None)
    assert percentiles({12: 0, 40: 0}) == Percentiles(0, None, None, None, None)


def test_percentiles_of_a_known_histogram() -> None:
    # 100 samples: 50 at 1 ms, 45 at 10 ms, 4 at 100 ms, 1 at 2 s.
    known = histogram((0.001, 50), (0.010, 45), (0.100, 4), (2.0, 1))
    result = percentiles(known)
    assert result == Percentiles(
        100, value_of(0.001), value_of(0.010), value_of(0.100), value_of(2.0)
    )


def test_percentiles_take_the_rank_at_or_above() -> None:
    # Ranks: 1-49 at 1 ms, 50-51 at 5 ms, 52-95 at 20 ms, 96-99 at 300 ms, 100 at 700 ms.
    result = percentiles(histogram((0.001, 49), (0.005, 2), (0.02, 44), (0.3, 4), (0.7, 1)))
    assert result.count == 100
    assert result.p50 == value_of(0.005)  # the 50th sample
    assert result.p95 == value_of(0.02)  # the 95th
    assert result.p99 == value_of(0.3)  # the 99th
    assert result.max == value_of(0.7)


def test_percentiles_of_one_sample() -> None:
    only = value_of(0.042)
    assert percentiles(histogram((0.042, 1))) == Percentiles(1, only, only, only, only)


def test_percentiles_of_two_samples() -> None:
    result = percentiles(histogram((0.001, 1), (1.0, 1)))
    assert (result.p50, result.p95, result.p99, result.max) == (
        value_of(0.001),
        value_of(1.0),
        value_of(1.0),
        value_of(1.0),
    )


def test_percentiles_read_the_histogram_in_latency_order() -> None:
    # Keys given out of order: the percentiles must not depend on the mapping's order.
    ordered = histogram((0.001, 90), (0.05, 9), (3.0, 1))
    shuffled = dict(reversed(list(ordered.items())))
    assert percentiles(shuffled) == percentiles(ordered)
    assert percentiles(shuffled).p50 == value_of(0.001)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=1e-6, max_value=1000.0), min_size=1, max_size=200))
def test_percentiles_match_the_samples(samples: list[float]) -> None:
    counts: dict[int, int] = {}
    for sample in samples:
        counts[latency_bucket(sample)] = counts.get(latency_bucket(sample), 0) + 1
    result = percentiles(counts)
    ordered = sorted(samples)
    assert result.count == len(samples)
    for fraction, got in ((0.50, result.p50), (0.95, result.p95), (0.99, result.p99)):
        exact = ordered[math.ceil(fraction * len(samples)) - 1]
        assert got == value_of(exact)
    assert result.max == value_of(ordered[-1])


# --- through Redis ------------------------------------------------------------------------


def flush(client: redis.Redis, batch: StatsBatch, now: float) -> None:
    pipe = client.pipeline(transaction=False)
    flush_into(batch, pipe, now)
    pipe.execute()


def test_flush_then_read_back(redis_client: redis.Redis) -> None:
    now = time.time()
    batch = StatsBatch()
    batch.outcome("done", 7)
    batch.outcome("done")
    batch.outcome("failed", 2)
    for seconds, count in ((0.002, 90), (0.2, 9), (4.0, 1)):
        for _ in range(count):
            batch.latency(WAIT, seconds)
            batch.latency(END_TO_END, seconds * 2)
    flush(redis_client, batch, now)
    assert not batch.fields  # reset after the flush

    buckets = read_buckets(redis_client, now, WINDOW)
    assert len(buckets) == WINDOW // STATS_BUCKET_SECONDS + 1
    window = summarize(buckets, WINDOW)
    assert window.seconds == WINDOW
    assert window.counts == {"done": 8, "failed": 2}
    assert window.rate("done") == 8 / WINDOW
    assert window.rate("dead") == 0.0
    assert window.wait == Percentiles(
        100, value_of(0.002), value_of(0.2), value_of(0.2), value_of(4.0)
    )
    assert window.end_to_end == Percentiles(
        100, value_of(0.004), value_of(0.4), value_of(0.4), value_of(8.0)
    )


def test_the_window_adds_up_its_buckets_and_only_them(redis_client: redis.Redis) -> None:
    now = float(bucket_start(time.time())) + 3.0
    for age, done in ((0, 1), (25, 10), (WINDOW, 100), (WINDOW + 10, 1000), (WINDOW * 3, 10_000)):
        batch = StatsBatch()
        batch.outcome("done", done)
        batch.latency(WAIT, 0.001 * done)
        flush(redis_client, batch, now - age)
    window = summarize(read_buckets(redis_client, now, WINDOW), WINDOW)
    # The buckets from now back to WINDOW seconds ago, the oldest one included.
    assert window.counts == {"done": 111}
    assert window.wait.count == 3
    assert window.wait.max == value_of(0.1)
    # A window of 0 s is the current bucket alone.
    assert summarize(read_buckets(redis_client, now, 0), 0).counts == {"done": 1}


def test_flushes_into_one_bucket_add_up(redis_client: redis.Redis) -> None:
    now = float(bucket_start(time.time())) + 1.0
    for _ in range(3):
        batch = StatsBatch()
        batch.outcome("retried", 2)
        batch.latency(END_TO_END, 0.5)
        flush(redis_client, batch, now)
    assert redis_client.hgetall(keys.stats_bucket(bucket_start(now))) == {
        b"retried": b"6",
        f"{END_TO_END}:{latency_bucket(0.5)}".encode(): b"3",
    }


def test_buckets_expire(redis_client: redis.Redis) -> None:
    now = time.time()
    batch = StatsBatch()
    batch.outcome("enqueued")
    flush(redis_client, batch, now)
    ttl = int(redis_client.ttl(keys.stats_bucket(bucket_start(now))))
    assert STATS_KEEP_SECONDS - 5 <= ttl <= STATS_KEEP_SECONDS
    assert STATS_KEEP_SECONDS > WINDOW  # what a view reads is still there


def test_an_empty_batch_writes_nothing(redis_client: redis.Redis) -> None:
    flush(redis_client, StatsBatch(), time.time())
    assert redis_client.dbsize() == 0
    window = summarize(read_buckets(redis_client, time.time(), WINDOW), WINDOW)
    assert window.counts == {}
    assert window.wait == window.end_to_end == Percentiles(0, None, None, None, None)


def test_notifications_and_lanes_are_counted_apart() -> None:
    batch = StatsBatch()
    batch.outcome("done", 3)
    batch.outcome("done", 2, lane="latency_10s")
    batch.outcome("done", 1, lane="latency_15m")
    batch.latency(WAIT, 0.001)  # a notification
    batch.latency(WAIT, 0.001, "latency_10s")
    batch.latency(WAIT, 0.002, "latency_10s")
    batch.latency(WAIT, 100.0, "latency_15m")  # a JIRA import: not the notifications'
    bucket = {name.encode(): str(count).encode() for name, count in batch.fields.items()}
    window = summarize([bucket], 60)
    assert window.counts == {"done": 3}
    assert window.wait.count == 1 and window.wait.max is not None and window.wait.max < 0.01
    assert window.lanes["latency_10s"].done == 2
    assert window.lanes["latency_10s"].wait.count == 2
    assert window.lanes["latency_15m"].wait.p50 is not None
    assert window.lanes["latency_15m"].wait.p50 > 90


# --- per topic ----------------------------------------------------------------------------


def test_topics_are_counted_with_their_wait_run_time_and_failures(
    redis_client: redis.Redis,
) -> None:
    now = time.time()
    batch = StatsBatch()
    for run in (0.01, 0.02, 0.03, 5.0):
        batch.topic("tuleap.tracker.artifact", wait=0.001, run=run)
    batch.topic("tuleap.tracker.artifact", wait=None, run=0.01, failed=True)
    batch.topic("odd:topic@with|marks", wait=2.0, run=0.5)
    flush(redis_client, batch, now)
    buckets = read_buckets(redis_client, now, WINDOW)
    assert summarize(buckets, WINDOW).topics == {}  # only when asked for
    topics = summarize(buckets, WINDOW, topics=True).topics
    assert list(topics) == ["tuleap.tracker.artifact", "odd:topic@with|marks"]  # busiest first
    artifact = topics["tuleap.tracker.artifact"]
    assert (artifact.count, artifact.failed) == (5, 1)
    assert artifact.wait.count == 4  # the one without an enqueue time has no wait
    assert artifact.run.count == 5
    assert artifact.run.max == value_of(5.0)  # the slowest
    assert artifact.run.p50 == value_of(0.02)
    odd = topics["odd:topic@with|marks"]
    assert (odd.count, odd.failed, odd.wait.max) == (1, 0, value_of(2.0))
    # The totals are untouched by the topics' fields.
    assert summarize(buckets, WINDOW, topics=True).counts == {}


def test_endless_topic_names_cost_a_bounded_number_of_fields(redis_client: redis.Redis) -> None:
    now = float(bucket_start(time.time())) + 1.0
    batch = StatsBatch()
    for n in range(MAX_TOPICS * 5):
        batch.topic(f"hostile.{n:04d}" + "x" * 500, wait=0.001, run=0.001)
        if n % 7 == 0:
            flush(redis_client, batch, now)  # flushes within one bucket share the cap
    flush(redis_client, batch, now)
    fields = redis_client.hkeys(keys.stats_bucket(bucket_start(now)))
    names = {field.decode().partition("|")[2] for field in fields if b"|" in field}
    assert len(names) == MAX_TOPICS + 1
    assert OTHER_TOPIC in names
    assert max(len(name) for name in names) <= 120
    topics = summarize(read_buckets(redis_client, now, WINDOW), WINDOW, topics=True).topics
    assert len(topics) <= MAX_TOPICS + 1
    assert sum(topic.count for topic in topics.values()) == MAX_TOPICS * 5
    assert topics[OTHER_TOPIC].count == MAX_TOPICS * 4

    # A new bucket counts names afresh; a window folds past MAX_TOPICS into (other).
    later = now + STATS_BUCKET_SECONDS
    for n in range(MAX_TOPICS):
        batch.topic(f"other.{n:04d}", wait=None, run=0.001)
    flush(redis_client, batch, later)
    window = summarize(read_buckets(redis_client, later, WINDOW), WINDOW, topics=True)
    assert len(window.topics) == MAX_TOPICS + 1
    assert sum(topic.count for topic in window.topics.values()) == MAX_TOPICS * 6


def test_many_workers_share_one_cap_per_bucket(redis_client: redis.Redis) -> None:
    """Each worker keeps its own cap; the bucket keeps one for them all (a script)."""
    now = float(bucket_start(time.time())) + 1.0
    for worker in range(5):
        batch = StatsBatch()
        batch.topic("tuleap.tracker.artifact", wait=0.001, run=0.01)  # everyone's
        for n in range(MAX_TOPICS - 1):
            batch.topic(f"w{worker}.{n}", wait=None, run=0.001)
        flush(redis_client, batch, now)
    fields = redis_client.hgetall(keys.stats_bucket(bucket_start(now)))
    names = {f.decode().partition("|")[2] for f in fields if b"|" in f}
    assert len(names) == MAX_TOPICS + 1  # the cap, and (other)
    assert fields[b"t#names"] == str(MAX_TOPICS).encode()
    topics = summarize(read_buckets(redis_client, now, WINDOW), WINDOW, topics=True).topics
    assert topics["tuleap.tracker.artifact"].count == 5  # admitted first, counted by all
    assert sum(topic.count for topic in topics.values()) == 5 * MAX_TOPICS
    assert topics[OTHER_TOPIC].count == 4 * (MAX_TOPICS - 1)
