"""What every view reads, from Tuleap's database: one snapshot in two round trips.

The same picture as Redis gives (:mod:`tuitop.snapshot`), at a cost bounded whatever the
queue's length: eight statements on tuitop's own small tables (the lanes listed among
them), then two for each lane — its rows counted up to
:data:`~tuitop.backends.db.pool.DEPTH_CAP` and its oldest, each an index range of
Tuleap's table (a lane is a ``queue_name``: :mod:`.lanes`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pymysql.cursors import Cursor

from tuitop.backends.db.pool import DEPTH_CAP, capped_count_sql
from tuitop.backends.db.schema import NOW
from tuitop.beats import json_fields
from tuitop.lanes import DEFAULT_LANE, LaneSet, is_lane_name, lane_queue
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
from tuitop.stats import STATS_BUCKET_SECONDS, WindowStats, bucket_start, summarize

_END = (
    "SELECT enqueue_timestamp + enqueue_timestamp_microsecond / 1000000 FROM async_events "
    "WHERE queue_name = %s ORDER BY id {} LIMIT 1"
)
"""The enqueue time of a queue's row at one end of its ids (``DESC``: the last)."""


def take_db_snapshot(cursor: Cursor, lanes: LaneSet, moment: float) -> Snapshot:
    """Reads everything a view shows (``lanes``: those of the view's config, shown even
    when empty) in two round trips."""
    oldest_bucket = bucket_start(moment) - FIVE_MINUTES
    listed, delayed, dead, workers, holding, pools, config, stats = _results(
        cursor,
        [
            ("SELECT lane FROM tuitop_lanes", []),
            (f"SELECT COUNT(*), MIN(due_at) - {NOW} FROM tuitop_delayed", []),
            (
                "SELECT COUNT(*) FROM (SELECT 1 FROM tuitop_dead_letters "
                f"LIMIT {DEPTH_CAP + 1}) AS dead",
                [],
            ),
            (f"SELECT id, expires_at > {NOW}, beat FROM tuitop_workers", []),
            ("SELECT worker_id, COUNT(*) FROM tuitop_processing GROUP BY worker_id", []),
            (f"SELECT name, beat FROM tuitop_pools WHERE expires_at > {NOW}", []),
            ("SELECT version, fields FROM tuitop_config WHERE one = 1", []),
            ("SELECT bucket, name, count FROM tuitop_stats WHERE bucket >= %s", [oldest_bucket]),
        ],
    )
    others = {str(lane) for (lane,) in listed} | {lane.name for lane in lanes.reserved}
    names = [DEFAULT_LANE, *sorted(name for name in others if is_lane_name(name))]
    # Each lane's rows are an index range: counted up to the cap, the oldest is one of
    # its ends — the first by id (UUIDv7: time-ordered), or the last, where the version-1
    # ids some of Tuleap's migrations insert (UUID_TO_BIN(UUID())) sort, after every v7 id.
    per_lane = _results(
        cursor,
        [
            statement
            for name in names
            for statement in (
                (capped_count_sql(DEPTH_CAP + 1), [lane_queue(name)]),
                (f"SELECT ({_END.format('')}), ({_END.format('DESC')})", [lane_queue(name)] * 2),
            )
        ],
    )
    lists = []
    capped = False
    for index, name in enumerate(names):
        (count,) = per_lane[2 * index][0]
        ends = [float(stamp) for stamp in per_lane[2 * index + 1][0] if stamp is not None]
        capped = capped or int(count) > DEPTH_CAP
        oldest = min(ends, default=0.0)
        age = moment - oldest if oldest > 0 else None
        lists.append((name, min(int(count), DEPTH_CAP), age))
    delayed_count, first_due_in = delayed[0]
    held = {str(worker_id): int(n) for worker_id, n in holding}
    worker_views: list[WorkerView] = []
    for worker_id, alive, beat in workers:
        fields = json_fields(beat) if alive else DEAD
        worker_views.append(worker_view(str(worker_id), fields, held.pop(str(worker_id), 0)))
    for worker_id, n in held.items():  # holding with no row: dead, recovered soon
        worker_views.append(worker_view(worker_id, DEAD, n))
    pool_views: list[PoolView] = [
        pool_view(str(name), fields) for name, beat in pools if (fields := json_fields(beat))
    ]
    published: Mapping[str, str] = {}
    if config:
        version, fields = config[0]
        published = {k.decode(): v.decode() for k, v in json_fields(fields).items()}
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


def _results(cursor: Cursor, statements: list[tuple[str, list[Any]]]) -> list[list[Any]]:
    """Each statement's rows, all sent in one round trip."""
    results: list[list[Any]] = []
    cursor.execute(";\n".join(cursor.mogrify(text, tuple(args)) for text, args in statements))
    while True:
        results.append(list(cursor.fetchall()))
        if not cursor.nextset():
            return results


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
    count = seconds // STATS_BUCKET_SECONDS + 1
    buckets: list[dict[bytes, bytes]] = [{} for _ in range(count)]
    for bucket, name, value in rows:
        index = (newest - int(bucket)) // STATS_BUCKET_SECONDS
        if 0 <= index < count:
            buckets[index][str(name).encode()] = str(int(value)).encode()
    return list(buckets)
