"""What every view reads, from Tuleap's database: one snapshot in one round trip.

The same picture as Redis gives (:mod:`tuitop.snapshot`), read with eight statements sent
together, at a cost bounded whatever the queue's length: the waiting rows are counted up to
:data:`~tuitop.backends.db.pool.DEPTH_CAP` (their lanes and oldest among those: the ids are
time-ordered, so the oldest of each lane is among the first rows unless the lane has none
there), everything else is tuitop's own small tables.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pymysql.cursors import Cursor

from tuitop import keys
from tuitop.backends.db.lanes import lane_expression
from tuitop.backends.db.pool import DEPTH_CAP
from tuitop.backends.db.schema import NOW, QUEUE_NAME
from tuitop.lanes import DEFAULT_LANE, LaneSet
from tuitop.snapshot import (
    DEAD,
    FIVE_MINUTES,
    PoolView,
    Snapshot,
    WorkerView,
    build_snapshot,
    pool_view,
    worker_view,
)
from tuitop.stats import WindowStats, bucket_start, summarize


def beat_fields(text: str | bytes | None) -> dict[bytes, bytes]:
    """A heartbeat row's JSON as the hash :meth:`~tuitop.beats.WorkerBeat.parse` reads;
    anything else than an object of plain values reads as none (anyone may write here)."""
    try:
        document = json.loads(text or "{}")
    except (ValueError, RecursionError):
        return {}
    if not isinstance(document, dict):
        return {}
    return {
        str(name).encode(): str(value).encode("utf-8", "replace")
        for name, value in document.items()
        if isinstance(value, str | int | float) and not isinstance(value, bool)
    }


def take_db_snapshot(cursor: Cursor, lanes: LaneSet, moment: float) -> Snapshot:
    """Reads everything a view shows, ``lanes`` naming the lane of each topic."""
    expression, lane_args = lane_expression(lanes)
    oldest_bucket = bucket_start(moment) - FIVE_MINUTES
    statements: list[tuple[str, list[Any]]] = [
        (
            f"SELECT {expression} AS lane, COUNT(*), MIN(enqueue_timestamp + "
            "enqueue_timestamp_microsecond / 1000000) FROM (SELECT topic, enqueue_timestamp, "
            "enqueue_timestamp_microsecond FROM async_events WHERE queue_name = %s "
            f"ORDER BY id LIMIT {DEPTH_CAP + 1}) AS waiting GROUP BY lane",
            [*lane_args, QUEUE_NAME],
        ),
        (f"SELECT COUNT(*), MIN(due_at) - {NOW} FROM tuitop_delayed", []),
        ("SELECT COUNT(*) FROM tuitop_dead_letters", []),
        (f"SELECT id, expires_at > {NOW}, beat FROM tuitop_workers", []),
        ("SELECT worker_id, COUNT(*) FROM tuitop_processing GROUP BY worker_id", []),
        (f"SELECT name, beat FROM tuitop_pools WHERE expires_at > {NOW}", []),
        ("SELECT version, fields FROM tuitop_config WHERE one = 1", []),
        ("SELECT bucket, name, count FROM tuitop_stats WHERE bucket >= %s", [oldest_bucket]),
    ]
    results: list[list[tuple[Any, ...]]] = []
    sql = ";\n".join(cursor.mogrify(text, tuple(args)) for text, args in statements)
    cursor.execute(sql)
    while True:
        results.append(list(cursor.fetchall()))
        if not cursor.nextset():
            break
    waiting, delayed, dead, workers, holding, pools, config, stats = results

    counted = {str(lane): (int(n), float(oldest)) for lane, n, oldest in waiting}
    total = sum(n for n, _ in counted.values())
    capped = total > DEPTH_CAP
    names = [DEFAULT_LANE, *(lane.name for lane in lanes.reserved)]
    names += sorted(set(counted) - set(names))
    lists = [
        (name, counted.get(name, (0, 0.0))[0], _age(counted.get(name), moment)) for name in names
    ]
    delayed_count, first_due_in = delayed[0]
    held = {str(worker_id): int(n) for worker_id, n in holding}
    worker_views: list[WorkerView] = []
    for worker_id, alive, beat in workers:
        fields = beat_fields(beat) if alive else DEAD
        worker_views.append(worker_view(str(worker_id), fields, held.pop(str(worker_id), 0)))
    for worker_id, n in held.items():  # holding with no row: dead, recovered soon
        worker_views.append(worker_view(worker_id, DEAD, n))
    pool_views: list[PoolView] = [
        pool_view(str(name), fields) for name, beat in pools if (fields := beat_fields(beat))
    ]
    published: Mapping[str, str] = {}
    if config:
        version, fields = config[0]
        published = {k.decode(): v.decode() for k, v in beat_fields(fields).items()}
        published = {**published, "version": str(version)}
    return build_snapshot(
        moment,
        lists=lists,
        delayed=int(delayed_count),
        next_retry_in=None if first_due_in is None else max(float(first_due_in), 0.0),
        dead_letters=int(dead[0][0]),
        workers=sorted(worker_views, key=lambda view: view.id),
        pools=sorted(pool_views, key=lambda view: view.name),
        buckets=_buckets(stats, moment),
        config=published,
        waiting_capped=capped,
    )


def _age(counted: tuple[int, float] | None, moment: float) -> float | None:
    if counted is None or counted[0] == 0 or counted[1] <= 0:
        return None
    return moment - counted[1]


def read_stats(cursor: Cursor, moment: float, seconds: int) -> WindowStats:
    """The counters and latencies of the last ``seconds``."""
    cursor.execute(
        "SELECT bucket, name, count FROM tuitop_stats WHERE bucket >= %s",
        (bucket_start(moment) - seconds,),
    )
    return summarize(_buckets(list(cursor.fetchall()), moment, seconds), seconds)


def _buckets(
    rows: list[tuple[Any, ...]], moment: float, seconds: int = FIVE_MINUTES
) -> list[Mapping[bytes, bytes]]:
    """The stats rows as Redis' bucket hashes, newest first."""
    newest = bucket_start(moment)
    count = seconds // keys.STATS_BUCKET_SECONDS + 1
    buckets: list[dict[bytes, bytes]] = [{} for _ in range(count)]
    for bucket, name, value in rows:
        index = (newest - int(bucket)) // keys.STATS_BUCKET_SECONDS
        if 0 <= index < count:
            buckets[index][str(name).encode()] = str(int(value)).encode()
    return list(buckets)
