"""The heartbeats' one definition: what the worker and the pool write is what views read."""

from __future__ import annotations

import redis

from tuitop.beats import PoolBeat, WorkerBeat
from tuitop.lanes import DEFAULT_LANE


def test_a_pool_beat_reads_back_as_written_through_redis(redis_client: redis.Redis) -> None:
    beat = PoolBeat(
        host="web-1", pid=42, wanted=3, configured=2, running=3, files=("/a.inc", "/b.inc"),
        log_level="debug", async_scope="all", lanes="latency_15m(1): x", served=("l1", "l2"),
        redis="r:6379", loaded_at=1.5, config_error="", stopping=True, beat=2.25,
    )  # fmt: skip
    redis_client.hset("beat", mapping=beat.fields())  # type: ignore[arg-type]
    assert PoolBeat.parse(redis_client.hgetall("beat")) == beat


def test_a_worker_beat_leaves_out_what_it_does_not_know(redis_client: redis.Redis) -> None:
    beat = WorkerBeat(pool="p", slot=1, state="busy", topic="t", cpu=None, rss=None, beat=3.0)
    assert "cpu" not in beat.fields() and "rss" not in beat.fields()
    redis_client.hset("beat", mapping=beat.fields())  # type: ignore[arg-type]
    read = WorkerBeat.parse(redis_client.hgetall("beat"))
    assert read == beat and read.cpu is None


def test_reading_forgives_missing_and_broken_fields() -> None:
    """An older or newer tuitop may write otherwise: defaults, or what the caller gives."""
    read = WorkerBeat.parse(
        {b"pid": b"nan", b"slot": b"x", b"done": b"7.0", b"serves": b"", b"new": b"?"},
        pid=99,
    )
    assert (read.pid, read.slot, read.done, read.serves) == (99, 0, 7, ())
    assert WorkerBeat.parse({}).serves == (DEFAULT_LANE,)
    assert PoolBeat.parse({b"stopping": b"0"}).stopping is False
    assert PoolBeat.parse({b"beat": b"inf"}).beat == 0.0
