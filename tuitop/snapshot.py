"""What every view reads: one consistent picture of the queue, the pools and the workers.

A snapshot costs two pipelined round trips to Redis and a number of commands that depends
on how many workers and pools are registered, never on how many messages are queued: LLEN
rather than LRANGE, LINDEX of the one message taken next for the age of the oldest waiting
one (Tuleap's SYSTEM_CHECK looks at the newest by mistake), the latency histograms of the
last five minutes as 31 small hashes (each with the fields of at most
:data:`~tuitop.stats.MAX_TOPICS` topics, so that hostile topic names cannot make a view
slow).
Views only read; a snapshot is plain frozen data that
a UI thread can hold without touching Redis again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

import redis

from tuitop.backends.redis import keys
from tuitop.beats import PoolBeat, WorkerBeat
from tuitop.lanes import DEFAULT_LANE
from tuitop.message import decode
from tuitop.stats import WindowStats, bucket_keys, summarize

MINUTE = 60
FIVE_MINUTES = 300


@dataclass(frozen=True)
class LaneView:
    """One lane (:mod:`tuitop.lanes`): its list, and the workers taking from it."""

    name: str
    waiting: int
    oldest_age: float | None
    """Seconds since the message taken next was enqueued (None: empty or no timestamp)."""
    workers: int
    """Live workers whose own lane it is."""
    helpers: int
    """Live workers of other lanes that take from it when theirs is empty."""


@dataclass(frozen=True)
class QueueView:
    waiting: int
    """In Tuleap's list and every lane's."""
    delayed: int
    dead_letters: int
    processing: int
    oldest_age: float | None
    """Seconds since the message taken next was enqueued (None: empty or no timestamp)."""
    next_retry_in: float | None
    waiting_capped: bool = False
    """``waiting`` is a lower bound: the database's queue is counted up to a cap."""


@dataclass(frozen=True, kw_only=True)
class WorkerView(WorkerBeat):
    """A registered worker: its heartbeat (the defaults when it has none: it is dead)."""

    id: str
    holding: int = 0
    """Messages in its processing list."""

    @property
    def slot_name(self) -> str:
        """``pool/slot``: the id without the pid, stable across the slot's replacements."""
        return self.id.split("#", 1)[0]


@dataclass(frozen=True, kw_only=True)
class PoolView(PoolBeat):
    """A live pool: its heartbeat."""

    name: str


@dataclass(frozen=True)
class Snapshot:
    taken_at: float
    queue: QueueView
    workers: tuple[WorkerView, ...]
    pools: tuple[PoolView, ...]
    last_ten_seconds: WindowStats
    """The last complete 10 s bucket: the rates a view shows (the current one is partial,
    and a minute's average lags behind a change)."""
    last_minute: WindowStats
    last_five_minutes: WindowStats
    history: tuple[WindowStats, ...] = ()
    """The last five minutes bucket by bucket (10 s each), oldest first, the current
    partial bucket left out: what a chart over time draws."""
    config: Mapping[str, str] = field(default_factory=dict)
    """The configuration the pools published (``keys.CONFIG``)."""
    lanes: tuple[LaneView, ...] = ()
    """The default lane first, then every lane a pool serves or served lately."""


def take_snapshot(client: redis.Redis, now: float | None = None) -> Snapshot:
    """Reads everything a view shows; raises redis.RedisError when Redis does not answer."""
    moment = time.time() if now is None else now
    pipe = client.pipeline(transaction=False)
    pipe.llen(keys.QUEUE)
    pipe.lindex(keys.QUEUE, -1)
    pipe.zcard(keys.DELAYED)
    pipe.zrange(keys.DELAYED, 0, 0, withscores=True)
    pipe.llen(keys.DEAD_LETTERS)
    pipe.smembers(keys.WORKERS)
    pipe.smembers(keys.POOLS)
    pipe.hgetall(keys.CONFIG)
    pipe.zrange(keys.LANES, 0, -1)
    for key in bucket_keys(moment, FIVE_MINUTES):
        pipe.hgetall(key)
    (waiting, oldest, delayed, first_due, dead, workers, pools, config, lane_names, *buckets) = (
        pipe.execute()
    )

    worker_ids = keys.names_in(cast(set[bytes], workers))
    pool_names = keys.names_in(cast(set[bytes], pools))
    pipe = client.pipeline(transaction=False)
    for worker_id in worker_ids:
        pipe.hgetall(keys.heartbeat(worker_id))
        pipe.llen(keys.processing_list(worker_id))
        # A worker that left cleanly between the two round trips is gone, not dead.
        pipe.sismember(keys.WORKERS, worker_id)
        pipe.exists(keys.worker_alive(worker_id))
    for name in pool_names:
        pipe.hgetall(keys.pool(name))
    other_lanes = keys.names_in(cast(list[bytes], lane_names))
    for lane in other_lanes:
        pipe.llen(keys.lane_list(lane))
        pipe.lindex(keys.lane_list(lane), -1)
    replies = pipe.execute() if worker_ids or pool_names or other_lanes else []
    lane_replies = replies[len(replies) - 2 * len(other_lanes) :]
    replies = replies[: len(replies) - 2 * len(other_lanes)]

    per_worker = 4
    pool_views = [
        pool_view(name, fields)
        for name, fields in zip(pool_names, replies[per_worker * len(worker_ids) :], strict=True)
        if fields
    ]
    listed = {worker_id for view in pool_views for worker_id in view.workers}
    worker_views = []
    for index, worker_id in enumerate(worker_ids):
        beat, holding, registered, said_alive = replies[
            per_worker * index : per_worker * index + per_worker
        ]
        if not registered:
            continue
        if not (said_alive or worker_id in listed):
            # Registered but silent (no live pool lists it, its own beat expired): dead,
            # its list recovered soon. What its hash last said stays shown.
            beat = {**beat, **DEAD}
        worker_views.append(worker_view(worker_id, beat, int(holding)))
    lists = [(DEFAULT_LANE, int(waiting), _age(oldest, moment))]
    for index, lane in enumerate(other_lanes):
        depth, lane_oldest = lane_replies[2 * index : 2 * index + 2]
        lists.append((lane, int(depth), _age(lane_oldest, moment)))
    next_retry = None
    if first_due and math.isfinite(due := float(first_due[0][1])):
        # A score of +inf (no tuitop's: anyone may ZADD) is due never: no time to say.
        next_retry = max(due - moment, 0.0)
    return build_snapshot(
        moment,
        lists=lists,
        delayed=int(delayed),
        next_retry_in=next_retry,
        dead_letters=int(dead),
        workers=worker_views,
        pools=pool_views,
        buckets=buckets,
        config={
            k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in config.items()
        },
    )


def build_snapshot(
    moment: float,
    *,
    lists: list[tuple[str, int, float | None]],
    delayed: int,
    next_retry_in: float | None,
    dead_letters: int,
    workers: list[WorkerView],
    pools: list[PoolView],
    buckets: list[Mapping[bytes, bytes]],
    config: Mapping[str, str],
    waiting_capped: bool = False,
) -> Snapshot:
    """A snapshot from what a store holds: each lane's (name, waiting, oldest age), the
    default lane first; the stats buckets of the last five minutes, newest first (as
    :func:`~tuitop.stats.bucket_keys` orders them)."""
    live = [worker for worker in workers if worker.state != "dead"]
    lane_views = tuple(
        LaneView(
            name,
            depth,
            lane_age,
            workers=sum(1 for worker in live if worker.lane == name),
            helpers=sum(1 for worker in live if worker.lane != name and name in worker.serves),
        )
        for name, depth, lane_age in lists
    )
    ages = [view.oldest_age for view in lane_views if view.oldest_age is not None]
    processing = sum(worker.holding for worker in workers)
    minute_buckets = buckets[: MINUTE // keys.STATS_BUCKET_SECONDS + 1]
    return Snapshot(
        taken_at=moment,
        queue=QueueView(
            sum(view.waiting for view in lane_views),
            delayed,
            dead_letters,
            processing,
            max(ages) if ages else None,
            next_retry_in,
            waiting_capped,
        ),
        workers=tuple(workers),
        pools=tuple(pools),
        last_ten_seconds=summarize(buckets[1:2], keys.STATS_BUCKET_SECONDS),
        last_minute=summarize(minute_buckets, MINUTE),
        last_five_minutes=summarize(buckets, FIVE_MINUTES, topics=True),
        history=tuple(
            summarize([bucket], keys.STATS_BUCKET_SECONDS) for bucket in reversed(buckets[1:])
        ),
        config=dict(config),
        lanes=lane_views,
    )


def _age(oldest: bytes | None, moment: float) -> float | None:
    return None if oldest is None else decode(oldest).age(moment)


DEAD = {b"state": b"dead"}
"""The heartbeat of a registered worker that has none: it is dead."""


def worker_view(worker_id: str, fields: Mapping[bytes, bytes], holding: int) -> WorkerView:
    slot_name, _, pid = worker_id.partition("#")
    return WorkerView.parse(
        fields,
        id=worker_id,
        holding=holding,
        pool=slot_name.rsplit("/", 1)[0],
        pid=int(pid) if pid.isascii() and pid.isdigit() and len(pid) <= 10 else 0,
    )


def pool_view(name: str, fields: Mapping[bytes, bytes]) -> PoolView:
    return PoolView.parse(fields, name=name)
