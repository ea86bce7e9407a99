"""Latency histograms and outcome counters in Redis, readable by any view at a fixed cost.

Workers add to a hash per 10-second bucket (``keys.stats_bucket``), pipelined with their
acks so that recording costs no round trip of its own. A hash holds counters (``done``,
``failed``, ``retried``, ``dead``, ``timedout``, ``enqueued``), one gauge (``depth``, the
queue's length as a pool last sampled it in that bucket) and two log-scale histograms:
``w:<i>`` for the wait (enqueue → start) and ``e:<i>`` for end to end (enqueue → done), with
8 buckets per power of two of microseconds (each within 9 % of the true value). A view reads
the last 5 minutes with one pipelined HGETALL per bucket — 31 commands whatever the load.

``done`` counts every message done, ``w`` and ``e`` the notifications only (what the
seed asks an admin to watch: a JIRA import's minutes would drown them). Per lane
(:mod:`tuitop.lanes`), every message's wait and done count go under ``w@<lane>:<i>`` and
``done@<lane>``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from redis import Redis
from redis.client import Pipeline

from tuitop import keys

SUBBUCKETS_PER_OCTAVE = 8
WAIT = "w"
END_TO_END = "e"
OUTCOMES = ("done", "failed", "retried", "dead", "timedout", "enqueued")
DEPTH = "depth"
"""A gauge, not a counter: a window's depth is its newest bucket's."""

POOL_TICK_SCRIPT = """
local now = tonumber(redis.call('TIME')[1])
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[3], now, ARGV[i])
end
local depth = redis.call('LLEN', KEYS[1])
for _, lane in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  depth = depth + redis.call('LLEN', ARGV[2] .. lane)
end
redis.call('HSET', KEYS[2], 'depth', depth)
redis.call('EXPIRE', KEYS[2], ARGV[1])
"""
"""A pool's once-a-tick bookkeeping in one command: says which lanes it serves (ARGV[3]...,
with Redis' time), and samples the number of messages waiting (Tuleap's list and every
lane's) into the current bucket (several pools overwrite each other's nearly equal
samples)."""


def pool_tick(serves: Iterable[str], now: float) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of POOL_TICK_SCRIPT for a pool serving the lanes ``serves``."""
    script_keys = [keys.QUEUE, keys.stats_bucket(bucket_start(now)), keys.LANES]
    lanes = sorted(lane for lane in serves if keys.lane_list(lane) != keys.QUEUE)
    return script_keys, [keys.STATS_KEEP_SECONDS, keys.LANE_PREFIX, *lanes]


def latency_bucket(seconds: float) -> int:
    """The histogram bucket of a latency (negative ones, from clock skew, count as 1 µs)."""
    microseconds = max(seconds * 1e6, 1.0)
    return int(math.log2(microseconds) * SUBBUCKETS_PER_OCTAVE)


def bucket_value(index: int) -> float:
    """The latency, in seconds, a bucket stands for (its geometric middle)."""
    return float(2 ** ((index + 0.5) / SUBBUCKETS_PER_OCTAVE) / 1e6)


def bucket_start(now: float) -> int:
    return int(now) - int(now) % keys.STATS_BUCKET_SECONDS


def _lane_kind(kind: str, lane: str | None) -> str:
    return kind if lane is None else f"{kind}@{lane}"


class StatsBatch:
    """What a worker observed since its last flush, added to Redis in one go."""

    def __init__(self) -> None:
        self.fields: Counter[str] = Counter()

    def outcome(self, name: str, count: int = 1, lane: str | None = None) -> None:
        """Counts ``name`` (``done`` …) in all, or for ``lane`` only."""
        self.fields[_lane_kind(name, lane)] += count

    def latency(self, kind: str, seconds: float, lane: str | None = None) -> None:
        """Adds a latency of ``kind`` (WAIT, END_TO_END) in all, or for ``lane`` only."""
        self.fields[f"{_lane_kind(kind, lane)}:{latency_bucket(seconds)}"] += 1

    def flush_into(self, pipe: Pipeline, now: float) -> None:
        """Queues the HINCRBYs on ``pipe`` (the caller's ack pipeline) and resets."""
        if not self.fields:
            return
        key = keys.stats_bucket(bucket_start(now))
        for name, count in self.fields.items():
            pipe.hincrby(key, name, count)
        pipe.expire(key, keys.STATS_KEEP_SECONDS)
        self.fields.clear()


@dataclass(frozen=True)
class Percentiles:
    """Latency percentiles in seconds over a window; ``count`` samples (0: all None)."""

    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None


@dataclass(frozen=True)
class LaneStats:
    """One lane's share of a window."""

    done: int
    wait: Percentiles


@dataclass(frozen=True)
class WindowStats:
    """Counters and latencies over the last ``seconds``."""

    seconds: int
    counts: Mapping[str, int]
    wait: Percentiles
    end_to_end: Percentiles
    depth: int | None = None
    """The queue's length sampled in the window's newest bucket that has a sample."""
    lanes: Mapping[str, LaneStats] = field(default_factory=dict)
    """Per lane that did anything in the window (the default lane included); ``wait`` and
    ``end_to_end`` above are the notifications'."""

    def rate(self, outcome: str) -> float:
        """Events per second over the window."""
        return self.counts.get(outcome, 0) / self.seconds


def percentiles(histogram: Mapping[int, int]) -> Percentiles:
    total = sum(histogram.values())
    if total == 0:
        return Percentiles(0, None, None, None, None)
    ordered = sorted(histogram.items())

    def at(fraction: float) -> float:
        rank = math.ceil(fraction * total)
        seen = 0
        for index, count in ordered:
            seen += count
            if seen >= rank:
                return bucket_value(index)
        return bucket_value(ordered[-1][0])

    return Percentiles(total, at(0.50), at(0.95), at(0.99), bucket_value(ordered[-1][0]))


def bucket_keys(now: float, seconds: int) -> list[str]:
    """The keys of the buckets covering the last ``seconds``, newest first."""
    newest = bucket_start(now)
    count = seconds // keys.STATS_BUCKET_SECONDS + 1
    return [keys.stats_bucket(newest - i * keys.STATS_BUCKET_SECONDS) for i in range(count)]


def read_buckets(redis: Redis, now: float, seconds: int) -> list[dict[bytes, bytes]]:
    """The raw buckets covering the last ``seconds``, newest first (one round trip)."""
    pipe = redis.pipeline(transaction=False)
    for key in bucket_keys(now, seconds):
        pipe.hgetall(key)
    return list(pipe.execute())


def summarize(buckets: Iterable[Mapping[bytes, bytes]], seconds: int) -> WindowStats:
    """Adds up buckets (as ``read_buckets`` returns them) into one window."""
    counts: Counter[str] = Counter()
    wait: Counter[int] = Counter()
    end_to_end: Counter[int] = Counter()
    lane_done: Counter[str] = Counter()
    lane_wait: dict[str, Counter[int]] = {}
    depth: int | None = None
    for bucket in buckets:  # newest first
        for raw_field, raw_count in bucket.items():
            name, count = raw_field.decode(), int(raw_count)
            kind, _, index = name.partition(":")
            kind, _, lane = kind.partition("@")
            if name == DEPTH:
                depth = count if depth is None else depth
            elif kind == WAIT and index and lane:
                lane_wait.setdefault(lane, Counter())[int(index)] += count
            elif kind == WAIT and index:
                wait[int(index)] += count
            elif kind == END_TO_END and index:
                end_to_end[int(index)] += count
            elif lane:
                if kind == "done":
                    lane_done[lane] += count
            else:
                counts[kind] += count
    lanes = {
        lane: LaneStats(lane_done[lane], percentiles(lane_wait.get(lane, Counter())))
        for lane in sorted(set(lane_done) | set(lane_wait))
    }
    return WindowStats(
        seconds, dict(counts), percentiles(wait), percentiles(end_to_end), depth, lanes
    )
