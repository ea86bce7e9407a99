"""A snapshot read from Redis (:class:`~tuitop.snapshot.Snapshot`).

It costs two pipelined round trips and a number of commands that depends on how many
workers and pools are registered, never on how many messages are queued: LLEN rather than
LRANGE, LINDEX of the one message taken next for the age of the oldest waiting one
(Tuleap's SYSTEM_CHECK looks at the newest by mistake), the latency histograms of the last
five minutes as 31 small hashes (each with the fields of at most
:data:`~tuitop.stats.MAX_TOPICS` topics, so that hostile topic names cannot make a view
slow).
"""

from __future__ import annotations

import math
import time
from typing import cast

import redis

from tuitop.backends.redis import keys
from tuitop.backends.redis.stats import bucket_keys
from tuitop.lanes import DEFAULT_LANE
from tuitop.message import decode
from tuitop.snapshot import DEAD, FIVE_MINUTES, Snapshot, build_snapshot, pool_view, worker_view


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


def _age(oldest: bytes | None, moment: float) -> float | None:
    return None if oldest is None else decode(oldest).age(moment)
