"""RQ's side: one function on the ``default`` queue, enqueued with ``result_ttl=0`` (no
result kept, as every pool here keeps none), RQ's defaults otherwise."""

from __future__ import annotations

from redis import Redis
from rq import Queue

from bench.peer_tasks import peer_jobs


def run(job: str, enqueued: float | None = None) -> None:
    peer_jobs.run(job, enqueued)


_queue: Queue | None = None


def enqueue(job: str, enqueued: float | None) -> None:
    global _queue
    if _queue is None:
        connection = Redis(host=peer_jobs.HOST, port=peer_jobs.port(), db=peer_jobs.broker_db())
        _queue = Queue("default", connection=connection)
    _queue.enqueue(run, job, enqueued, result_ttl=0)
