"""The Redis pool's scan for processing lists no registered, leased worker holds
(RedisPoolStore._stranded, once a minute): it finds them, and a key under the same prefix
that is no list (anyone may write to the Redis) must not fail the pool's scan — and with
it the pool's link, once a minute — nor keep it from finding the lists that are."""

from __future__ import annotations

import redis

from tuitop.backends.base import RetryPolicy
from tuitop.backends.redis import keys
from tuitop.backends.redis.pool import RedisPoolStore
from tuitop.config import RedisSettings
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.message import encode

GONE = "other/0#4242"
"""A worker of another pool, neither registered nor leased: its list is stranded."""


def pool_store(server: EmbeddedRedis) -> RedisPoolStore:
    return RedisPoolStore(
        RedisSettings("127.0.0.1", server.port),
        pool_name="p",
        retry=RetryPolicy(),
        socket_timeout=5.0,
    )


def test_a_stranded_list_is_found_by_the_scan(
    redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    redis_client.rpush(keys.processing_list(GONE), encode("tuitop.noop", {"n": 1}))
    store = pool_store(redis_server)
    try:
        assert store.silent_workers(set()) == [GONE]
    finally:
        store.close()


def test_a_key_under_the_processing_prefix_that_is_no_list_does_not_fail_the_scan(
    redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """A string, a hash, a set named like a processing list: no worker's list, nothing to
    recover. Before the fix, LLEN's WRONGTYPE failed the whole pipeline: the scan raised
    StoreUnavailable, the pool's link went down (its every minute), and the stranded
    list beside it was never recovered."""
    redis_client.set(keys.processing_list("junk-string"), b"x")
    redis_client.hset(keys.processing_list("junk-hash"), "k", "v")
    redis_client.sadd(keys.processing_list("junk-set"), b"x")
    redis_client.rpush(keys.processing_list(GONE), encode("tuitop.noop", {"n": 1}))
    store = pool_store(redis_server)
    try:
        assert store.silent_workers(set()) == [GONE]
        assert store.recover(GONE, "stranded", unless_beating=True).total == 1
    finally:
        store.close()
    assert redis_client.get(keys.processing_list("junk-string")) == b"x"  # left alone


def test_keys_under_the_processing_prefix_that_are_no_lists_fail_no_other_scan(
    redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """The same prefix is scanned for Tuleap's own workers' lists (a number after it: the
    pool's left_behind every minute, adopt-tuleap) and by hand-back (every list): a key of
    another type there, numbered or not, is nobody's list — skipped, never an error that
    takes the pool's link down every minute or stops the command."""
    from tuitop.backends import open_queue

    redis_client.set(keys.processing_list("7"), b"x")  # numbered, as Tuleap's worker 7
    redis_client.hset(keys.processing_list("junk-hash"), "k", "v")
    redis_client.rpush(keys.processing_list("3"), encode("tuitop.noop", {"n": 3}))
    redis_client.rpush(keys.processing_list(GONE), encode("tuitop.noop", {"n": 1}))
    store = pool_store(redis_server)
    admin = open_queue(RedisSettings("127.0.0.1", redis_server.port), "tuitop:test")
    try:
        assert store.left_behind(0.0) == []  # first sight of list 3: not yet judged gone
        left = admin.tuleap_left()
        assert left is not None and [found.number for found in left] == [3]
        assert admin.hand_back("handed back").recovered == 1  # GONE's (3 is adopt-tuleap's)
    finally:
        admin.close()
        store.close()
    assert redis_client.get(keys.processing_list("7")) == b"x"
