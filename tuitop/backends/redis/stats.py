"""The stats buckets in Redis (:mod:`tuitop.stats` says what a bucket holds): a hash per
10-second bucket (``keys.stats_bucket``), written by the workers pipelined with their acks
(:func:`flush_into`) and by the pools' ticks (:data:`POOL_TICK_SCRIPT`), read by any view
at a fixed cost (:func:`read_buckets`)."""

from __future__ import annotations

from collections.abc import Iterable

from redis import Redis
from redis.client import Pipeline

from tuitop.backends.redis import keys
from tuitop.stats import (
    MAX_TOPICS,
    STATS_BUCKET_SECONDS,
    STATS_KEEP_SECONDS,
    StatsBatch,
    bucket_start,
)

POOL_TICK_SCRIPT = """
local now = tonumber(redis.call('TIME')[1])
for i = 4, #ARGV do
  redis.call('ZADD', KEYS[3], now, ARGV[i])
end
if ARGV[3] == '1' then
  local depth = redis.call('LLEN', KEYS[1])
  for _, lane in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    depth = depth + redis.call('LLEN', ARGV[2] .. lane)
  end
  redis.call('HSET', KEYS[2], 'depth', depth)
  redis.call('EXPIRE', KEYS[2], ARGV[1])
end
"""
"""A pool's bookkeeping with its heartbeat, in one command: says which lanes it serves
(ARGV[4]..., with Redis' time), and, when ARGV[3] is '1', samples the number of messages
waiting (Tuleap's list and every lane's) into the current bucket (several pools overwrite
each other's nearly equal samples)."""


def pool_tick(
    serves: Iterable[str], now: float, *, sample: bool
) -> tuple[list[str], list[str | int]] | None:
    """KEYS and ARGV of POOL_TICK_SCRIPT for a pool serving the lanes ``serves`` (and
    sampling the depth, with ``sample``); None when it has nothing to do."""
    lanes = sorted(lane for lane in serves if keys.lane_list(lane) != keys.QUEUE)
    if not lanes and not sample:
        return None
    script_keys = [keys.QUEUE, keys.stats_bucket(bucket_start(now)), keys.LANES]
    return script_keys, [STATS_KEEP_SECONDS, keys.LANE_PREFIX, int(sample), *lanes]


def flush_into(batch: StatsBatch, pipe: Pipeline, now: float) -> None:
    """Queues ``batch``'s HINCRBYs on ``pipe`` (the caller's ack pipeline) and resets; the
    topics' fields through TOPICS_SCRIPT, which keeps the bucket's cap."""
    if not batch.fields:
        return
    key = keys.stats_bucket(bucket_start(now))
    plain, topics = batch.split()
    for name, count in plain.items():
        pipe.hincrby(key, name, count)
    if topics:
        args: list[str | int] = [MAX_TOPICS]
        for topic, heads in topics.items():
            args += [topic, len(heads)]
            for head, count in heads.items():
                args += [head, count]
        pipe.eval(TOPICS_SCRIPT, 1, key, *args)
    pipe.expire(key, STATS_KEEP_SECONDS)
    batch.written(now)


TOPICS_SCRIPT = """
local cap = tonumber(ARGV[1])
local i = 2
while i <= #ARGV do
  local topic, fields = ARGV[i], tonumber(ARGV[i + 1])
  local name = topic
  if redis.call('HEXISTS', KEYS[1], 't#n|' .. topic) == 0 and topic ~= '(other)' then
    if tonumber(redis.call('HINCRBY', KEYS[1], 't#names', 0)) < cap then
      redis.call('HINCRBY', KEYS[1], 't#names', 1)
    else
      name = '(other)'
    end
  end
  for j = 0, fields - 1 do
    local at = i + 2 + 2 * j
    redis.call('HINCRBY', KEYS[1], 't#' .. ARGV[at] .. '|' .. name, ARGV[at + 1])
  end
  i = i + 2 + 2 * fields
end
"""
"""Adds each topic's fields (ARGV: the cap, then per topic its name, its number of fields
and those as head, count) to the bucket KEYS[1], under the topic's name while the bucket
holds fewer than the cap (counted in ``t#names``) or already holds it, else under
OTHER_TOPIC: a cap per bucket whatever the number of workers writing to it."""


def bucket_keys(now: float, seconds: int) -> list[str]:
    """The keys of the buckets covering the last ``seconds``, newest first."""
    newest = bucket_start(now)
    count = seconds // STATS_BUCKET_SECONDS + 1
    return [keys.stats_bucket(newest - i * STATS_BUCKET_SECONDS) for i in range(count)]


def read_buckets(redis: Redis, now: float, seconds: int) -> list[dict[bytes, bytes]]:
    """The raw buckets covering the last ``seconds``, newest first (one round trip)."""
    pipe = redis.pipeline(transaction=False)
    for key in bucket_keys(now, seconds):
        pipe.hgetall(key)
    return list(pipe.execute())
