"""Dramatiq's side: one actor on a ``RedisBroker`` (queue ``default``), Dramatiq's default
middleware and options."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.peer_tasks import peer_jobs

broker = RedisBroker(host=peer_jobs.HOST, port=peer_jobs.port(), db=peer_jobs.broker_db())
dramatiq.set_broker(broker)


@dramatiq.actor
def run(job: str, enqueued: float | None = None) -> None:
    peer_jobs.run(job, enqueued)


def enqueue(job: str, enqueued: float | None) -> None:
    run.send(job, enqueued)
