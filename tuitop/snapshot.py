"""What every view reads: one consistent picture of the queue, the pools and the workers.

Each store reads its own (:mod:`tuitop.backends.redis.snapshot`,
:mod:`tuitop.backends.db.snapshot`) at a cost that depends on how many workers and pools
are registered, never on how many messages are queued, and builds it here
(:func:`build_snapshot`). Views only read; a snapshot is plain frozen data that a UI
thread can hold without touching the store again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tuitop.beats import PoolBeat, WorkerBeat
from tuitop.stats import STATS_BUCKET_SECONDS, WindowStats, summarize

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
    minute_buckets = buckets[: MINUTE // STATS_BUCKET_SECONDS + 1]
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
        last_ten_seconds=summarize(buckets[1:2], STATS_BUCKET_SECONDS),
        last_minute=summarize(minute_buckets, MINUTE),
        last_five_minutes=summarize(buckets, FIVE_MINUTES, topics=True),
        history=tuple(
            summarize([bucket], STATS_BUCKET_SECONDS) for bucket in reversed(buckets[1:])
        ),
        config=dict(config),
        lanes=lane_views,
    )


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
