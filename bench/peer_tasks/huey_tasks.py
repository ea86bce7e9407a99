"""Huey's side: one task on a ``RedisHuey`` named ``bench`` (list ``huey.redis.bench``),
results off, Huey's defaults otherwise (blocking dequeue, BRPOP with a 1 s timeout)."""

from __future__ import annotations

from huey import RedisHuey

from bench.peer_tasks import peer_jobs

huey = RedisHuey(
    "bench",
    host=peer_jobs.HOST,
    port=peer_jobs.port(),
    db=peer_jobs.broker_db(),
    results=False,
)


@huey.task()
def run(job: str, enqueued: float | None = None) -> None:
    peer_jobs.run(job, enqueued)


def enqueue(job: str, enqueued: float | None) -> None:
    run(job, enqueued)
